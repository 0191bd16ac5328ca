"""The TinyStories protocol's resume logic on a tiny budget (cpu-tiny models of a few steps, synthetic
stories standing in for the three splits)."""

import json

import pytest

from latentlm import protocol as P
from latentlm.data.synthetic import generate_stories, write_jsonl
from latentlm.errors import DataError, InputError
from latentlm.eval.compare import CompareConfig
from latentlm.training import TrainResult


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ts")
    for split, n, seed in (("train", 300, 0), ("valid", 40, 1), ("test", 40, 2)):
        write_jsonl(generate_stories(n, seed=seed), root / f"{split}.jsonl")
    return root


STAGES = P.STAGES[:4]  # AR, judge, autoencoder, denoiser: enough for the logic, and fast
steps = ["train.steps=3", "train.warmup_steps=1", "train.eval_every=3", "train.batch_size=4"]


def tiny_cfg(**kw) -> P.ProtocolConfig:
    compare = CompareConfig(prompts=12, seeds=1, max_new_tokens=8, nll_texts=2, nll_samples=2, cloze_items=2,
                            nfe_sweep=(), speed_lengths=(8,), speed_batch=1, mauve=False, curves=False,
                            bootstrap=10, window=4)
    base = dict(preset="cpu-tiny", save_every=2, overrides={s.name: steps for s in STAGES}, splits=("valid",),
                stages=STAGES, compare=compare, latents_texts=8, latents_prompts=6)
    return P.ProtocolConfig(**{**base, **kw})


@pytest.mark.slow
def test_protocol_skips_finished_stages_and_resumes_the_interrupted_one(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = []
    real = P.run_training

    def signalled_at_autoencoder(kind, *a, **kw):
        calls.append(kind)
        if kind == "autoencoder":  # as a SIGTERM: the trainer saves a checkpoint and returns interrupted
            return TrainResult(step=1, train_loss=0.0, valid_loss=None, out_dir=a[1], interrupted=True)
        return real(kind, *a, **kw)

    monkeypatch.setattr(P, "run_training", signalled_at_autoencoder)
    with pytest.raises(KeyboardInterrupt, match="autoencoder interrupted"):
        P.tinystories_protocol(out, data_dir, cfg=tiny_cfg(), progress=False, log=lambda _: None)
    assert calls == ["ar", "judge", "autoencoder"]
    clock = json.loads((out / "protocol.json").read_text())["stages"]
    assert clock["ar"]["done"] and clock["judge"]["done"] and not clock["autoencoder"].get("done")
    first_ar = clock["ar"]["seconds"]

    calls.clear()
    monkeypatch.setattr(P, "run_training", lambda kind, *a, **kw: calls.append(kind) or real(kind, *a, **kw))
    results = P.tinystories_protocol(out, data_dir, cfg=tiny_cfg(), progress=False, log=lambda _: None)
    assert calls == ["autoencoder", "denoiser"]  # finished stages are not trained again
    clock = json.loads((out / "protocol.json").read_text())["stages"]
    assert clock["autoencoder"]["runs"] == 2 and clock["ar"]["runs"] == 1 and clock["ar"]["seconds"] == first_ar
    rows = results["splits"]["valid"]
    assert {"ar", "latent", "real text"} <= set(rows)
    assert rows["ar"]["nats_per_token"] > 0 and rows["ar"]["exact"] and not rows["latent"]["exact"]
    t = results["training"]
    assert t["ar"]["steps"] == t["denoiser"]["steps"] == 3 and t["ar"]["steady_seconds"] > 0
    assert t["denoiser"]["x_ar"] == pytest.approx(t["denoiser"]["steady_seconds"] / t["ar"]["steady_seconds"])
    assert t["judge"].get("x_ar") is None  # the judge is no diffusion model
    # compute: counted per run from its run_config.json; the latent model's includes its autoencoder's
    assert t["ar"]["flops_per_token"] > 0 and t["ar"]["frozen_params"] == 0
    assert t["denoiser"]["frozen_params"] == t["autoencoder"]["trained_params"] > 0
    assert t["denoiser"]["flops_x_ar"] == pytest.approx(
        (t["denoiser"]["total_flops"] + t["autoencoder"]["total_flops"]) / t["ar"]["total_flops"])
    assert rows["latent"]["sample_flops_per_token"] > 0 and rows["ar"]["latency_s"]["8"] > 0
    assert "| denoiser | denoiser |" in P.render_training(results) and "| latent |" in P.render_sampling(results, "valid")
    table = P.render_results(results, "valid")
    assert table.count("\n") == 2 + sum(1 for n in rows if not n.startswith("sanity") or n == "sanity: bigram")
    latent_row = next(line for line in table.splitlines() if line.startswith("| latent |"))
    assert f"{t['denoiser']['x_ar']:.2f}x AR; {t['denoiser']['x_ar_total']:.2f}x with its autoencoder)" in latent_row
    assert (out / "results.md").is_file() and (out / "compare_valid" / "report.md").is_file()
    # the generability report of the latent model, before compare: its per-t map in the results
    per_t = results["latents"]["latent"]["per_t"]
    assert len(per_t) == 15 and all(0 <= r["x0_accuracy"] <= 1 for r in per_t)
    assert (out / "latents_denoiser.md").is_file() and "| 0.02 |" in P.render_per_t(results)
    # the latent pipeline's copy of the autoencoder is a link to the autoencoder run's file
    copies = [f for f in (out / "denoiser" / "autoencoder").iterdir() if f.is_symlink()]
    assert copies and all(f.resolve().parent == (out / "autoencoder").resolve() for f in copies)

    # a finished run reruns nothing and gives the same table; a stage's model can be swapped in by path
    calls.clear()
    again = P.tinystories_protocol(out, data_dir, cfg=tiny_cfg(), progress=False, log=lambda _: None)
    assert calls == [] and again["splits"] == results["splits"]
    given = P.tinystories_protocol(tmp_path / "swap", data_dir, cfg=tiny_cfg(splits=()), progress=False,
                                   log=lambda _: None, models={k: out / k for k in ("tokenizer", "ar", "judge",
                                                                                   "autoencoder", "denoiser")})
    assert calls == [] and given["training"]["ar"]["given"] == str(out / "ar")
    assert not (tmp_path / "swap" / "results.json").exists()  # no splits: trains only, writes no results
    assert "| ar | ar |" in P.render_training(given)

    # a variant joins the finished run as one more row: only it is trained, and it is kept for reruns
    with_wide = dict(variants=("wide=denoiser:loss.time_std=1.0",),
                     overrides={**{s.name: steps for s in STAGES}, "wide": steps})
    wide = P.tinystories_protocol(out, data_dir, cfg=tiny_cfg(**with_wide), progress=False, log=lambda _: None)
    assert calls == ["denoiser"] and "wide" in wide["splits"]["valid"] and wide["training"]["wide"]["x_ar"] > 0
    assert json.loads((out / "wide" / "run_config.json").read_text())["loss"]["time_std"] == 1.0
    calls.clear()
    kept = P.tinystories_protocol(out, data_dir, cfg=tiny_cfg(), progress=False, log=lambda _: None)
    assert calls == [] and kept["splits"] == wide["splits"]
    with pytest.raises(InputError, match="defined in this run"):
        P.tinystories_protocol(out, data_dir, cfg=tiny_cfg(variants=("wide=denoiser:loss.time_std=2.0",)),
                               progress=False, log=lambda _: None)


def test_protocol_bad_input(data_dir, tmp_path):
    with pytest.raises(DataError, match="test.jsonl"):
        P.tinystories_protocol(tmp_path / "o", tmp_path, cfg=tiny_cfg())
    with pytest.raises(InputError, match="no stage 'gpt'"):
        P.tinystories_protocol(tmp_path / "o", data_dir, cfg=tiny_cfg(), models={"gpt": tmp_path})
    with pytest.raises(InputError, match="not a trained model folder"):
        P.tinystories_protocol(tmp_path / "o", data_dir, cfg=tiny_cfg(), models={"ar": tmp_path})
    with pytest.raises(InputError, match="unknown stage"):
        P.ProtocolConfig(overrides={"gpt": ["train.steps=1"]}).validate()
    with pytest.raises(InputError, match="split"):
        P.ProtocolConfig(splits=("train",)).validate()


@pytest.mark.parametrize("spec, message", [
    ("wide", "NAME=BASE"), ("ar=denoiser", "taken"), ("a b=denoiser", "taken"),
    ("x=gpt", "no stage or kind 'gpt'"), ("x=denoiser@nowhere", "no stage 'nowhere'"),
    ("x=denoiser:time_std=1", "not SECTION.KEY=VALUE"), ("x=ar@autoencoder", "only a denoiser"),
    ("x=decoder", "needs @PIPELINE_STAGE")])
def test_bad_variants_are_clear_errors(spec, message):
    with pytest.raises(InputError, match=message):
        P.parse_variant(spec, P.STAGES)


def test_variants_build_on_stages_and_on_each_other():
    ae = P.parse_variant("ae-ar=autoencoder:model.group_decoder=local-ar", P.STAGES)
    assert ae.kind == "autoencoder" and ae.compared is None
    den = P.parse_variant("latent-ar=denoiser_block@ae-ar:loss.time_std=1", (*P.STAGES, ae))
    assert (den.autoencoder, den.compared) == ("ae-ar", "latent-ar")
    assert den.overrides == ("model.block_size=4", "model.sampling_mode=block-ar", "train.steps=1200", "loss.time_std=1")
    adapted = P.parse_variant("adapted=decoder@latent-ar", (*P.STAGES, ae, den))
    assert (adapted.kind, adapted.pipeline, adapted.compared) == ("decoder", "latent-ar", "adapted")


def test_write_docs_replaces_only_the_marked_block(tmp_path):
    results = {"finished": "2026-01-01 00:00:00", "device": "cpu", "splits": {"test": {
        "ar": {"gen_ppl": 40.0, "mauve": 0.6, "mauve_ci": [0.55, 0.65], "entropy": 8.9, "matched_ppl": 38.0,
               "matched_knob": "temperature", "nats_per_token": 3.1, "exact": True}}},
        "training": {"ar": {"kind": "ar", "compared": "ar", "seconds": 600.0}}}
    (tmp_path / "docs").mkdir()
    for f in ("README.md", "docs/tinystories.md"):
        (tmp_path / f).write_text(f"before\n{P.BEGIN}\nold table\n{P.END}\nafter\n")
    P.write_docs(results, tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert text.startswith("before\n") and text.endswith(f"{P.END}\nafter\n") and "old table" not in text
    assert "| ar | 38.0 | 0.600 [0.550, 0.650] | 8.90 | 40.0 |" in text and "10 min" in text
    (tmp_path / "README.md").write_text("no markers")
    with pytest.raises(InputError, match="markers"):
        P.write_docs(results, tmp_path)


def test_samples_are_the_first_openings_of_each_row_side_by_side(tmp_path):
    samples = tmp_path / "compare_test" / "samples"
    samples.mkdir(parents=True)
    rows = {"ar": [("o1", " a1"), ("o1", " a1 again"), ("o2", " a2"), ("o3", " a3")],
            "block-broad": [("o2", " b2"), ("o1", " b1\n\nmore"), ("o2", " b2 again")]}
    for name, recs in rows.items():
        (samples / f"{name.replace('-', '_')}.jsonl").write_text(
            "".join(json.dumps({"prompt": p, "continuation": c, "text": p + c}) + "\n" for p, c in recs))
    md = P.render_samples(tmp_path, "test", ["block-broad"], n=5)
    # the AR's order, each opening's first sample, openings only one row has left out
    assert md.index("o1") < md.index("o2") and "o3" not in md and "again" not in md
    assert "- *ar:* a1" in md and "- *block-broad:* b1 more" in md and "- *block-broad:* b2" in md
    with pytest.raises(InputError, match="no samples of row 'mdlm'.*ar, block_broad"):
        P.render_samples(tmp_path, "test", ["mdlm"])
    with pytest.raises(InputError, match="positive integer"):
        P.render_samples(tmp_path, "test", ["block-broad"], n=0)
    (samples / "block_broad.jsonl").write_text("{not json\n")
    with pytest.raises(InputError, match="line 1: not a sample record"):
        P.render_samples(tmp_path, "test", ["block-broad"])


def test_two_clocks_on_one_folder_keep_each_others_stages(tmp_path):
    """Two protocol runs on one folder (one split each) both write protocol.json: neither erases the
    other's stage or a row a third run adds, and a stage's own entry is the writer's."""
    path = tmp_path / "protocol.json"
    a, b = P.StageClock(path), P.StageClock(path)
    a.run("compare_valid", lambda: None)
    b.run("compare_test", lambda: None)
    a.mark("compare_valid", note="a")
    P.StageClock(path).put("variants", ["x=denoiser"])  # a third run adds a row while both go on
    b.run("compare_test", lambda: None)
    data = json.loads(path.read_text())
    assert data["stages"]["compare_valid"]["done"] and data["stages"]["compare_test"]["done"]
    assert data["stages"]["compare_valid"]["note"] == "a"
    assert data["variants"] == ["x=denoiser"] and data["stages"]["compare_test"]["runs"] == 2
    assert P.StageClock(path).is_done("compare_test") and P.StageClock(path).is_done("compare_valid")


def test_a_second_process_waits_for_the_stage_the_first_is_working_on(tmp_path):
    """--splits valid beside --splits test: one trains a stage, the other waits for it, then finds it done."""
    import threading
    import time

    from filelock import FileLock

    held = FileLock(tmp_path / ".denoiser.lock")  # another process's hold, on a file descriptor of its own
    held.acquire()
    said, inside = [], threading.Event()

    def second() -> None:
        with P.claimed(tmp_path, "denoiser", said.append):
            inside.set()

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.3)
    assert not inside.is_set() and said and "waiting" in said[0]
    held.release()
    thread.join(timeout=10)
    assert inside.is_set()
    with P.claimed(tmp_path, "denoiser", said.append):  # free: no waiting, nothing said
        pass
    assert len(said) == 1


def test_sampling_table_marks_a_sample_that_ended_before_the_asked_length():
    rows = {"ar": {"sample_flops_per_token": 2e7, "latency_s": {"128": 1.0}, "tokens_made": {"128": 128}},
            "block": {"sample_flops_per_token": 7e7, "latency_s": {"128": 1.8, "1024": 0.9},
                      "tokens_made": {"128": 128, "1024": 212}}}
    table = P.render_sampling({"splits": {"test": rows}}, "test")
    assert "| ar | 20.0 | 1.00 | - |" in table and "| block | 70.0 | 1.80 | 0.90 (212 made) |" in table


def test_training_times_from_two_machines_are_not_compared(tmp_path):
    """A run folder resumed on another machine: each stage records the machines that trained it; the
    training table gives a time ratio to the AR's only for stages of the AR's one machine, and names
    which machine trained which stage."""
    from latentlm.device import machine_name

    clock = P.StageClock(tmp_path / "protocol.json")
    clock.run("ar", lambda: None)
    assert clock.data["stages"]["ar"]["machines"] == [machine_name()]
    stages = {"ar": {"seconds": 100.0, "machines": ["fast"]}, "mdlm": {"seconds": 200.0, "machines": ["fast"]},
              "autoencoder": {"seconds": 50.0, "machines": ["fast"]},
              "denoiser": {"seconds": 400.0, "machines": ["slow"]},
              "denoiser_block": {"seconds": 300.0, "machines": ["fast", "slow"]}}
    results = P.summarise({"stages": stages}, {}, P.ProtocolConfig(), "cpu")
    t = results["training"]
    assert t["mdlm"]["x_ar"] == 2.0
    assert "x_ar" not in t["denoiser"] and "x_ar" not in t["denoiser_block"]
    table = P.render_training(results)
    assert "- fast: ar, autoencoder, mdlm, denoiser_block" in table and "- slow: denoiser, denoiser_block" in table
    one = {n: {**s, "machines": ["fast"]} for n, s in stages.items()}  # one machine: every ratio, no list
    one["adapted"] = {"seconds": 150.0, "machines": ["fast"]}
    cfg = P.ProtocolConfig(variants=("adapted=decoder@denoiser",))
    results = P.summarise({"stages": one}, {}, P.with_variants(cfg, P.StageClock(tmp_path / "one.json")), "cpu")
    t = results["training"]
    # a latent model's whole training: autoencoder + denoiser (+ the decoder adapted to it)
    assert t["denoiser"]["x_ar"] == 4.0 and t["denoiser"]["x_ar_total"] == 4.5
    assert t["adapted"]["x_ar"] == 1.5 and t["adapted"]["x_ar_total"] == 6.0
    table = P.render_training(results)
    assert "| 4.00 (4.50 with its autoencoder) |" in table and "| 1.50 (6.00 with its pipeline) |" in table
    assert "more than one machine" not in table


def test_status_reads_each_stage_state_and_time_left(tmp_path):
    with pytest.raises(InputError, match="holds no protocol run"):
        P.protocol_status(tmp_path)
    (tmp_path / "protocol.json").write_text(json.dumps({"stages": {
        "tokenizer": {"seconds": 1.0, "done": True}, "ar": {"seconds": 1200.0, "done": True},
        "judge": {"seconds": 50.0}}, "variants": ["wide=denoiser:loss.time_std=2.0"]}))
    for name, logged in (("ar", [(10, 20.0), (20, 20.0)]), ("judge", [(10, 30.0), (20, 40.0), (30, 30.0)])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run_config.json").write_text(json.dumps({"train": {"steps": 100}}))
        (tmp_path / name / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": st, "seconds": sec}) + "\n" for st, sec in logged))
    rows = {r["stage"]: r for r in P.protocol_status(tmp_path)}
    assert rows["ar"]["state"] == "done" and "seconds_left" not in rows["ar"]
    assert rows["judge"]["state"] == "step 30/100" and rows["judge"]["seconds_per_step"] == pytest.approx(3.0)
    assert rows["judge"]["seconds_left"] == pytest.approx(70 * 3.0)
    assert rows["wide"]["state"] == rows["compare_test"]["state"] == "not started"  # a remembered variant
    assert "| judge | step 30/100 | 1 min | 3.00 | 4 min |" in P.render_status(list(rows.values()))
    # a compare run that finished before a row joined: the row is still to compare
    clock = json.loads((tmp_path / "protocol.json").read_text())
    clock["stages"]["compare_valid"] = {"seconds": 60.0, "done": True}
    (tmp_path / "protocol.json").write_text(json.dumps(clock))
    (tmp_path / "compare_valid").mkdir()
    systems = {name: {} for name in ("ar", "latent", "mdlm", "latent-block")}
    (tmp_path / "compare_valid" / "results.json").write_text(
        json.dumps({"config": {"systems": systems}, "sections": {"meta": {}}}))
    cfg = P.ProtocolConfig(splits=("valid",))
    assert {r["stage"]: r for r in P.protocol_status(tmp_path, cfg)}["compare_valid"]["state"] == \
        "rows to compare: wide"
    systems["wide"] = {}
    (tmp_path / "compare_valid" / "results.json").write_text(
        json.dumps({"config": {"systems": systems}, "sections": {"meta": {}}}))
    assert {r["stage"]: r for r in P.protocol_status(tmp_path, cfg)}["compare_valid"]["state"] == "done"


def test_steady_time_counts_the_steps_each_interval_timed(tmp_path):
    """A run stopped at step 13 and resumed logs step 20 after 7 steps: that interval timed 7, not 10."""
    log = tmp_path / "metrics.jsonl"
    records = [{"step": 10, "seconds": 20.0, "interval_steps": 10}, {"step": 20, "seconds": 17.5, "interval_steps": 7},
               {"step": 30, "seconds": 25.0, "interval_steps": 10}]
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert P.steady_seconds(log) == (pytest.approx(2.5 * 30), 30)  # per step 2.0, 2.5, 2.5
    log.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "interval_steps"}) + "\n" for r in records))
    assert P.steady_seconds(log)[0] == pytest.approx(2.0 * 30)  # logs without the field: 2.0, 1.75, 2.5


def test_a_stage_on_another_machine_is_timed_against_the_ars_pace_there(tmp_path):
    """A run folder resumed on a slower machine: a stage trained there is divided by the AR's time
    there, its pace measured there times its steps; a latent model sums each run's ratio."""
    (tmp_path / "ar").mkdir()
    (tmp_path / "ar" / "metrics.jsonl").write_text(  # 1 s/step over 20 steps on "fast"
        "".join(json.dumps({"step": s, "seconds": 10.0, "interval_steps": 10}) + "\n" for s in (10, 20)))
    stages = {"ar": {"seconds": 25.0, "machines": ["fast"]}, "autoencoder": {"seconds": 50.0, "machines": ["fast"]},
              "denoiser": {"seconds": 400.0, "machines": ["slow"]}, "mdlm": {"seconds": 300.0, "machines": ["slow"]},
              "denoiser_block": {"seconds": 300.0, "machines": ["fast", "slow"]}}
    cfg, folders = P.ProtocolConfig(), {"ar": tmp_path / "ar"}
    t = P.summarise({"stages": stages}, {}, cfg, "cpu", folders)["training"]
    assert "x_ar" not in t["denoiser"] and "x_ar" not in t["mdlm"]  # the AR was never timed on "slow"
    results = P.summarise({"stages": stages, "ar_pace": {"slow": 4.0}}, {}, cfg, "cpu", folders)
    t = results["training"]
    assert t["mdlm"]["x_ar"] == pytest.approx(300 / 80)  # the AR on "slow": 4 s/step x 20 steps
    assert t["denoiser"]["x_ar"] == pytest.approx(5.0) and t["denoiser"]["x_ar_total"] == pytest.approx(5.0 + 2.5)
    assert "x_ar" not in t["denoiser_block"]  # trained on two machines: no ratio
    assert "- slow: denoiser, mdlm, denoiser_block (the AR's pace: 4.00 s/step)" in P.render_training(results)


def test_a_machine_that_did_not_train_the_ar_times_its_pace_once(tmp_path, monkeypatch):
    from latentlm.device import machine_name

    clock = P.StageClock(tmp_path / "protocol.json")
    clock.mark("ar", machines=["another machine"])
    (tmp_path / "ar").mkdir()
    (tmp_path / "ar" / "run_config.json").write_text("{}")
    calls = []
    monkeypatch.setattr(P, "measure_ar_pace", lambda *a: calls.append(a) or 2.5)
    for _ in range(2):  # timed once, then read from protocol.json
        P._time_ar_here(tmp_path / "ar", tmp_path, {"train": tmp_path / "train.jsonl"}, P.ProtocolConfig(),
                        clock, tmp_path, lambda _: None)
    assert len(calls) == 1 and json.loads((tmp_path / "protocol.json").read_text())["ar_pace"] == {machine_name(): 2.5}
    own = P.StageClock(tmp_path / "own.json")
    own.mark("ar", machines=[machine_name()])
    monkeypatch.setattr(P, "measure_ar_pace", lambda *a: pytest.fail("timed the AR on its own machine"))
    P._time_ar_here(tmp_path / "ar", tmp_path, {"train": tmp_path / "t.jsonl"}, P.ProtocolConfig(), own,
                    tmp_path, lambda _: None)
    assert "ar_pace" not in json.loads((tmp_path / "own.json").read_text())


def test_the_ars_pace_is_its_saved_run_timed_here(data_dir, tmp_path):
    from latentlm.recipes import run_training

    tiny = ["train.steps=2", "train.warmup_steps=1", "train.eval_every=2", "train.batch_size=4"]
    run_training("ar", [data_dir / "train.jsonl"], tmp_path / "ar", preset="cpu-tiny", overrides=tiny, progress=False)
    pace = P.measure_ar_pace(tmp_path / "ar", tmp_path / "ar", data_dir / "train.jsonl", tmp_path / "work", 4)
    assert 0 < pace < 60 and not (tmp_path / "work").exists()


def test_a_damaged_ar_configuration_is_named_before_timing(tmp_path):
    from latentlm.errors import CheckpointError

    (tmp_path / "ar").mkdir()
    (tmp_path / "ar" / "run_config.json").write_text('{"train": ')
    with pytest.raises(CheckpointError, match="run_config.json cannot be read"):
        P.measure_ar_pace(tmp_path / "ar", tmp_path / "ar", tmp_path / "train.jsonl", tmp_path / "work", 4)
    assert not (tmp_path / "work").exists()


def test_a_run_folder_keeps_one_copy_of_each_model(tmp_path):
    from latentlm.files import link_copies

    ae, pipe = tmp_path / "ae", tmp_path / "pipe"
    (pipe / "autoencoder").mkdir(parents=True)
    (pipe / "denoiser").mkdir()
    ae.mkdir()
    weights = bytes(range(256)) * 400
    (ae / "model.safetensors").write_bytes(weights)
    (pipe / "autoencoder" / "model.safetensors").write_bytes(weights)
    (pipe / "denoiser" / "model.safetensors").write_bytes(weights[::-1])  # same size, other bytes
    (pipe / "autoencoder" / "config.json").write_text("{}")
    assert link_copies(pipe, [ae, pipe]) == len(weights)
    copy = pipe / "autoencoder" / "model.safetensors"
    assert copy.is_symlink() and copy.read_bytes() == weights and copy.resolve() == (ae / "model.safetensors").resolve()
    assert not (pipe / "denoiser" / "model.safetensors").is_symlink()
    assert link_copies(pipe, [ae]) == 0  # linked once: nothing left to link


def test_a_one_split_run_keeps_the_other_splits_results(tmp_path):
    path = tmp_path / "results.json"
    assert P.with_earlier_splits(path, {"valid": {"ar": 1}}) == {"valid": {"ar": 1}}  # no earlier file
    path.write_text(json.dumps({"splits": {"valid": {"ar": 0}, "test": {"ar": 2}}}))
    merged = P.with_earlier_splits(path, {"valid": {"ar": 1, "duo": 3}})
    assert merged == {"valid": {"ar": 1, "duo": 3}, "test": {"ar": 2}}  # this run's valid, the earlier test
    assert list(merged) == ["valid", "test"]  # the protocol's order: test stays the rendered headline
    assert list(P.with_earlier_splits(path, {"test": {"ar": 4}})) == ["valid", "test"]
    path.write_text("{not json")
    assert P.with_earlier_splits(path, {"test": {"ar": 4}}) == {"test": {"ar": 4}}
