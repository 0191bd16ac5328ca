import json
import subprocess
import sys

import pytest

from latentlm.cli import build_parser, main
from latentlm.recipes import resolve_run_config


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "latentlm", *args], capture_output=True, text=True, timeout=600,
                          **kw)


@pytest.mark.parametrize("cmd", [[], ["data"], ["data", "synthetic"], ["train"], ["train", "tokenizer"],
                                 ["train", "ar"], ["info"], ["generate"], ["quickstart"]])
def test_every_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*cmd, "--help"])
    assert e.value.code == 0
    assert "usage: latentlm" in capsys.readouterr().out


@pytest.mark.slow
def test_synthetic_tokenizer_train_info_generate(tmp_path):
    data = tmp_path / "stories.jsonl"
    assert main(["data", "synthetic", "--n", "300", "--seed", "1", "--out", str(data)]) == 0
    lines = data.read_text().splitlines()
    assert len(lines) == 300 and json.loads(lines[0])["text"].startswith("once upon a time")
    assert main(["train", "tokenizer", "--data", str(data), "--out", str(tmp_path / "tok"),
                 "--vocab-size", "600"]) == 0
    out = tmp_path / "ar"
    proc = run("train", "ar", "--preset", "cpu-tiny", "--data", str(data), "--tokenizer", str(tmp_path / "tok"),
               "--out", str(out), "--set", "train.steps=4", "--set", "model.dim=32", "--set", "model.depth=1",
               "--set", "train.eval_every=2")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["step"] == 4
    info = run("info", "--model", str(out))
    assert info.returncode == 0, info.stderr
    described = json.loads(info.stdout)
    assert described["class"] == "CausalLM" and described["parameters"] > 0
    training = described["training"]  # its run's cost: 4 steps of the preset's batch at 128 tokens a row
    assert training["trained_params"] == described["parameters"] and training["flops_per_token"] > 0
    assert training["tokens"] == 4 * resolve_run_config("ar", "cpu-tiny")["train"].batch_size * 128
    gen = run("generate", "--model", str(out), "once upon a time", "--max-new-tokens", "5", "--num-samples-per-prompt", "2")
    assert gen.returncode == 0, gen.stderr
    assert all(line.startswith("once upon a time") for line in gen.stdout.strip().splitlines())


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "ar", "--preset", "nope", "--data", "x.txt", "--out", "o"], "unknown preset 'nope'"),
        (["train", "ar", "--data", "missing.txt", "--out", "o"], "does not exist"),
        (["train", "ar", "--data", "x.txt", "--out", "o", "--set", "train.steps=0"], "positive integer"),
        (["train", "ar", "--data", "x.txt", "--out", "o", "--set", "train.batch_size=-2"], "positive integer"),
        (["train", "ar", "--data", "x.txt", "--out", "o", "--set", "train.bogus=1"], "unknown key"),
        (["info", "--model", "nowhere"], "does not exist"),
        (["generate", "--model", "nowhere", "hi"], "does not exist"),
        (["generate", "--model", "nowhere", "hi", "--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_bad_input_exits_2_with_message(tmp_path, capsys, args, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.txt").write_text("some text\n\nmore text\n")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("latentlm: error:") and message in err and "Traceback" not in err


def test_python_dash_m_entry_point():
    proc = run("--help")
    assert proc.returncode == 0 and "quickstart" in proc.stdout


def _saved_as(folder, kind: str):
    """A folder that reads as a saved model of ``kind`` (its JSON only: the flag check comes before loading)."""
    from latentlm.kinds import get_kind

    folder.mkdir()
    entry = get_kind(kind)
    if entry.saved_as == "pipeline":
        (folder / "model_index.json").write_text("{}")
    else:
        cfg = {"model_type": "gpt2"} if entry.saved_as == "transformers" else {"_class_name": entry.class_name}
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("kind", ["ar", "mdlm", "duo", "sedd", "ptp", "latent", "hf"])
def test_generate_refuses_a_flag_that_does_not_apply_to_the_models_kind(kind, tmp_path, capsys):
    from latentlm.kinds import GENERATION_OPTIONS, get_kind, kinds_taking

    folder = _saved_as(tmp_path / kind, kind)
    values = {"guidance_interval": ["0", "0.5"], "corrector_interval": ["0", "0.5"], "decoder": ["llada"],
              "scheduler": ["ddpm"], "mode": ["parallel"]}
    refused = [o for o in GENERATION_OPTIONS.values() if o.name not in get_kind(kind).options]
    assert refused, f"every option applies to {kind}"
    for option in refused:
        capsys.readouterr()
        assert main(["generate", "--model", str(folder), "hi", option.flag, *values.get(option.name, ["2"])]) == 2
        err = capsys.readouterr().err
        assert f"{option.flag} does not apply" in err and f"a {kind} model" in err
        assert f"it applies to {', '.join(kinds_taking(option.name))}" in err


def test_train_commands_and_generate_flags_come_from_the_registry(capsys):
    from latentlm.kinds import GENERATION_OPTIONS, trainable_kinds

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    out = capsys.readouterr().out
    assert all(k.name in out for k in trainable_kinds())
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--help"])
    out = capsys.readouterr().out
    assert all(o.flag in out for o in GENERATION_OPTIONS.values()) and "--steps" not in out
