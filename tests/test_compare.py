"""`latentlm compare` end to end on tiny untrained models: every section, partial results, bad input."""

import json

import pytest
import torch

from latentlm import LatentDiffusionPipeline
from latentlm.autoencoder import TextAutoencoder
from latentlm.baselines import CausalLM
from latentlm.baselines.masked_diffusion import MaskedDiffusionLM
from latentlm.baselines.parallel_token_prediction import ParallelTokenPredictor
from latentlm.cli import main
from latentlm.data.synthetic import generate_stories, write_jsonl
from latentlm.diffusion import LatentDenoiser
from latentlm.errors import DataError, InputError
from latentlm.eval import compare as compare_module
from latentlm.eval.compare import REAL, CompareConfig, compare
from latentlm.pipeline_latent_diffusion import make_scheduler


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("compare")
    torch.manual_seed(0)
    v = len(tiny_tokenizer)
    for name, cls in (("ar", CausalLM), ("mdlm", MaskedDiffusionLM)):
        cls(vocab_size=v, dim=32, depth=1, n_heads=4, max_seq_len=256).save_pretrained(root / name)
        tiny_tokenizer.save_pretrained(root / name)
    ar = CausalLM.from_pretrained(root / "ar")
    ParallelTokenPredictor.from_teacher(ar, draft_tokens=4).save_pretrained(root / "ptp")  # untrained drafts
    ar.save_pretrained(root / "ptp" / "teacher")
    for folder in (root / "ptp", root / "ptp" / "teacher"):
        tiny_tokenizer.save_pretrained(folder)
    ae = TextAutoencoder(vocab_size=v, max_seq_len=64, latent_dim=8, dim=32, encoder_depth=1, decoder_depth=1)
    den = LatentDenoiser(latent_dim=8, dim=32, depth=1, n_heads=4, max_latents=16)
    LatentDiffusionPipeline(tiny_tokenizer, ae, den, make_scheduler("ddim", den)).save_pretrained(root / "latent")
    write_jsonl(generate_stories(60, seed=7), root / "valid.jsonl")
    write_jsonl(generate_stories(200, seed=8), root / "train.jsonl")
    return root


def small_config(**kw):
    base = dict(prompts=20, max_new_tokens=16, nll_texts=4, nll_samples=2, cloze_items=6, nfe_sweep=(2, 4),
                sweep_prompts=4, speed_lengths=(8, 300), speed_batch=2, window=4, bootstrap=20,
                mauve_bootstrap=10, curve_prompts=12)
    return CompareConfig(**{**base, **kw})


@pytest.mark.slow
def test_compare_writes_every_section_and_resumes(folders, tmp_path, monkeypatch):
    models = {k: folders / k for k in ("latent", "mdlm", "ar", "ptp")}
    out = tmp_path / "report"
    res = compare(models, folders / "valid.jsonl", out, train=folders / "train.jsonl", judge=None,
                  cfg=small_config(reference_words=16), options={"latent": {"num_inference_steps": 2}, "mdlm": {"num_inference_steps": 4}}, progress=False)
    s = res["sections"]
    for name in models:
        assert s[f"likelihood/{name}"]["nats_per_token"] > 0
        assert 0 <= s[f"cloze/{name}"]["accuracy"] <= 1
    rows = s["quality"]["rows"]
    assert set(rows) >= {"latent", "mdlm", "ar", "real text", "sanity: unigram", "sanity: repeat"}
    assert rows["sanity: copy train"]["memorised8"] > 0.9  # copies of training stories are memorised
    assert rows["ar"]["rep4_ci"][0] <= rows["ar"]["rep4"] <= rows["ar"]["rep4_ci"][1]
    for key in ("entropy", "distinct2"):  # statistics of the pooled samples: an interval around the value
        assert rows["ar"][f"{key}_ci"][0] <= rows["ar"][key] <= rows["ar"][f"{key}_ci"][1]
    for name in ("ar", "latent", REAL):  # every MAUVE has its interval
        assert rows[name]["mauve_ci"][0] <= rows[name]["mauve_ci"][1]
    assert "diversity" not in s and "quality-entropy curves" in s["skipped"]  # they need a judge
    # PTP decodes its AR's samples: identical, so its quality rows are the AR's; its likelihood is the AR's
    assert s["lossless/ptp"] == {"identical": 20, "n": 20}
    assert rows["ptp"] == rows["ar"]
    assert s["likelihood/ptp"]["nats_per_token"] == s["likelihood/ar"]["nats_per_token"]
    assert s["consistency"]["probe"]["real text"]["consistent"] == 1.0  # the true continuations
    # the references are the real continuations cut by words, no model's tokenizer involved
    real_rows = [json.loads(x) for x in (out / "samples" / "real_text.jsonl").read_text().splitlines()]
    assert len(real_rows) == 20 and max(len(r["continuation"].split()) for r in real_rows) == 16
    # random words beat real text on distinct bigrams (on word entropy they tie with these short stories)
    assert "sanity: unigram" in s["quality"]["hackable"]["distinct2"]
    assert s["skipped"]["generation perplexity"] == "no --judge model given"
    assert {r["model"] for r in s["nfe_sweep"]} == set(models)
    # past the context (256): the AR slides its cache, PTP and MDLM say why they skip
    speed = {(r["model"], r["new_tokens"]): r for r in s["speed"]}
    assert speed["ar", 300]["latency_s"] > 0 and speed["ar", 300]["tokens_made"] == 300
    assert "exceeds the context" in speed["ptp", 300]["skipped"] and speed["mdlm", 300]["skipped"]
    assert all(r["latency_s"] > 0 and 0 <= r["tokens_made"] <= 8 for r in s["speed"] if r["new_tokens"] == 8)
    for f in ("report.md", "results.json", "quality_vs_nfe.png", "latency_vs_length.png",
              "consistency_vs_distance.png", "samples/latent_seed0.jsonl"):
        assert (out / f).is_file(), f
    report = (out / "report.md").read_text()
    assert "hackable" in report and "| ar |" in report and "| ptp | 20 / 20 |" in report
    # where compare's time went: every stage, per model where it is per model
    took = res["seconds"]
    assert {f"{stage} {name}" for stage in ("likelihood", "generate", "cloze", "speed") for name in models} <= set(took)
    assert all(v >= 0 for v in took.values()) and took["generate mdlm"] > 0
    assert "## Where the time went" in report
    # "auto" runs on the GPU when there is one, and the report names the device that ran
    assert s["meta"]["device"].startswith("cpu") == (not torch.cuda.is_available())

    # an interrupted run keeps its finished sections: drop one, rerun, only it is recomputed
    data = json.loads((out / "results.json").read_text())
    del data["sections"]["speed"]
    (out / "results.json").write_text(json.dumps(data))
    again = compare(models, folders / "valid.jsonl", out, train=folders / "train.jsonl", cfg=small_config(reference_words=16),
                    options={"latent": {"num_inference_steps": 2}, "mdlm": {"num_inference_steps": 4}}, progress=False)
    assert again["sections"]["quality"] == s["quality"]
    assert "speed" in again["sections"]
    # a quality section whose corpus intervals were drawn another way is redone from its cached rows
    data = json.loads((out / "results.json").read_text())
    del data["sections"]["quality"]["corpus_intervals"]
    for row in data["sections"]["quality"]["rows"].values():
        row["entropy_ci"] = [0.0, 0.0]
    (out / "results.json").write_text(json.dumps(data))
    monkeypatch.setattr(compare_module.M, "mauve_score", lambda *a, **kw: pytest.fail("MAUVE scored again"))
    redone = compare(models, folders / "valid.jsonl", out, train=folders / "train.jsonl", cfg=small_config(reference_words=16),
                     options={"latent": {"num_inference_steps": 2}, "mdlm": {"num_inference_steps": 4}}, progress=False)
    assert redone["sections"]["quality"] == s["quality"]
    assert all(again["seconds"][k] >= v for k, v in took.items())  # summed over both runs


@pytest.mark.slow
def test_a_system_added_to_a_finished_comparison_costs_only_its_own_work(folders, tmp_path, monkeypatch):
    """The rows of a tuning round join the finished table: the unchanged systems' samples, likelihoods
    and sweeps are reused; a changed system is redone; the aggregate sections cover every system."""
    out = tmp_path / "report"
    cfg = small_config(mauve=False, speed_lengths=(8,), nfe_sweep=(2,))
    first = compare({"ar": folders / "ar", "latent": folders / "latent"}, folders / "valid.jsonl", out,
                    train=folders / "train.jsonl", cfg=cfg, options={"latent": {"num_inference_steps": 2}}, progress=False)
    generated = []
    real = compare_module.generate_samples
    monkeypatch.setattr(compare_module, "generate_samples",
                        lambda lm, *a, **kw: generated.append(lm.name) or real(lm, *a, **kw))
    models = {"ar": folders / "ar", "latent": folders / "latent", "latent-4": folders / "latent"}
    again = compare(models, folders / "valid.jsonl", out, train=folders / "train.jsonl", cfg=cfg,
                    options={"latent": {"num_inference_steps": 3}, "latent-4": {"num_inference_steps": 4}}, progress=False)
    assert set(generated) == {"latent", "latent-4"}  # "latent" changed (3 steps): redone; the AR's reused
    s, s0 = again["sections"], first["sections"]
    assert s["likelihood/ar"] == s0["likelihood/ar"] and s["quality"]["rows"]["ar"] == s0["quality"]["rows"]["ar"]
    assert set(s["quality"]["rows"]) >= set(models) and {r["model"] for r in s["speed"]} == set(models)
    assert {r["model"] for r in s["nfe_sweep"]} == set(models)
    # removing a system drops its rows; another data file discards everything
    generated.clear()
    fewer = compare({"ar": folders / "ar"}, folders / "valid.jsonl", out, train=folders / "train.jsonl", cfg=cfg,
                    progress=False)
    assert generated == [] and "latent" not in fewer["sections"]["quality"]["rows"]
    assert "generate ar" in fewer["seconds"] and not any(k.endswith(" latent") for k in fewer["seconds"])
    assert not list(out.glob("samples/latent_seed*"))


@pytest.mark.slow
def test_every_opening_compared_still_gives_every_system_a_mauve(folders, tmp_path):
    """When every opening of the split is compared (the TinyStories protocol), no held-out story is left
    for real text's data-vs-data ceiling: it comes from the training texts, and without them only the
    ceiling is missing, never the systems' MAUVE."""
    cfg = small_config(prompts=100_000, nfe_sweep=(), speed_lengths=(8,), nll_texts=2, cloze_items=2)
    docs = compare_module.read_documents([folders / "valid.jsonl"])
    pairs = compare_module.openings(docs, 100_000, cfg, True)
    real = compare_module.cut_references([c for _, c in pairs], cfg)
    train = compare_module.read_documents([folders / "train.jsonl"])
    feats, ceiling, why = compare_module.mauve_references(docs, pairs, real, cfg, train)
    assert len(feats) == len(pairs) == len(ceiling) and why is None  # topped up from the training texts
    feats, ceiling, why = compare_module.mauve_references(docs, pairs, real, cfg)
    assert ceiling is None and "--train" in why
    with pytest.raises(DataError, match="10\\+ openings"):
        compare_module.mauve_references(docs, pairs[:9], real[:9], cfg)
    res = compare({"ar": folders / "ar"}, folders / "valid.jsonl", tmp_path / "r", cfg=cfg, progress=False)
    rows = res["sections"]["quality"]["rows"]
    assert rows["ar"]["n"] == len(pairs) and 0 <= rows["ar"]["mauve"] <= 1 and "mauve_ci" in rows["ar"]
    assert "mauve" not in rows[REAL] and "ceiling" in " ".join(res["sections"]["skipped"])


def test_compare_draws_quality_against_entropy_for_each_knob(folders, tmp_path, tiny_tokenizer, monkeypatch):
    knobs = {"ar": {"temperature": (0.5, 1.0, 2.0)}, "mdlm": {"temperature": (0.5, 1.0)},
             "latent": {"decoder_temperature": (0.0, 1.0), "num_inference_steps": (2, 4)}}  # the kinds' knobs, fewer values
    assert all(set(knobs[k]) == set(compare_module.diversity_knobs(k)) for k in knobs)
    monkeypatch.setattr(compare_module, "diversity_knobs", lambda kind: knobs.get(kind, {}))
    drawn, draw = [], compare_module._diversity_curves
    monkeypatch.setattr(compare_module, "_diversity_curves", lambda lm, name, *a: drawn.append(name) or draw(lm, name, *a))
    judge = tmp_path / "judge"
    torch.manual_seed(1)
    CausalLM(vocab_size=len(tiny_tokenizer), dim=32, depth=1, n_heads=4, max_seq_len=256).save_pretrained(judge)
    tiny_tokenizer.save_pretrained(judge)
    models = {k: folders / k for k in ("latent", "mdlm", "ar")}
    out = tmp_path / "report"
    cfg = small_config(nfe_sweep=(), speed_lengths=(8,), nll_texts=2, cloze_items=2, mauve_bootstrap=0, batch_size=4)
    res = compare(models, folders / "valid.jsonl", out, judge=judge, cfg=cfg,
                  options={"latent": {"num_inference_steps": 2}, "mdlm": {"num_inference_steps": 4}}, progress=False)
    s = res["sections"]
    # the curves of the fastest samplers first (a stopped run keeps the most rows)
    assert drawn == sorted(models, key=lambda n: res["seconds"][f"generate {n}"])
    at_main_options = {"ar": ("temperature", 1.0), "mdlm": ("temperature", 1.0), "latent": ("num_inference_steps", 2)}
    for name, kind in (("ar", "ar"), ("mdlm", "mdlm"), ("latent", "latent")):
        curves = s[f"diversity/{name}"]["curves"]
        assert set(curves) == set(knobs[kind])
        for knob, points in curves.items():
            assert [p["value"] for p in points] == list(knobs[kind][knob])
            assert all(p["gen_ppl"] > 1 and p["entropy"] > 0 and 0 <= p["mauve"] <= 1 for p in points)
        # the point at the main table's options is its first seed's samples of the same openings, not drawn again
        knob, v = at_main_options[name]
        main_rows = [json.loads(line) for line in (out / "samples" / f"{name}_seed0.jsonl").read_text().splitlines()]
        point = [r for line in (out / "samples" / f"curve_{name}_{knob}_{v}.partial").read_text().splitlines()
                 for r in json.loads(line)["out"]]
        assert [c for _, c, _ in point] == [r["continuation"] for r in main_rows[: cfg.curve_prompts]]
    # and they are the very samples the point would draw afresh
    ar_rows = [json.loads(line) for line in (out / "samples" / "ar_seed0.jsonl").read_text().splitlines()]
    fresh, _ = compare_module.generate_samples(compare_module.load_language_model(folders / "ar"),
                                               [r["prompt"] for r in ar_rows[: cfg.curve_prompts]], cfg, {},
                                               seed=cfg.seed)
    reused = [r for line in (out / "samples" / "curve_ar_temperature_1.0.partial").read_text().splitlines()
              for r in json.loads(line)["out"]]
    assert fresh == [(t, c) for t, c, _ in reused]
    div = s["diversity"]
    assert div["real_entropy"] > 0 and set(div["matched"]) == set(models)
    for name, m in div["matched"].items():  # a perplexity where a curve crosses real text's entropy, else None
        assert (m["gen_ppl"] is None) == (m["knob"] is None)
        if m["knob"]:
            ppl = [p["gen_ppl"] for p in s[f"diversity/{name}"]["curves"][m["knob"]]]
            assert min(ppl) <= m["gen_ppl"] <= max(ppl)
    assert (out / "quality_vs_entropy.png").is_file()
    assert "## Quality against diversity" in (out / "report.md").read_text()


def test_a_curve_point_reuses_only_whole_batches_of_the_same_openings(tmp_path):
    """Openings 0-11 in batches of 5 reuse the main batches at 0 and 5; the one at 10 covers openings
    10-14, not 10-11, and a line cut by an interruption is skipped; a cache already started is kept."""
    source, cache = tmp_path / "main.partial", tmp_path / "curve.partial"
    batches = [{"start": a, "out": [[f"t{i}", f"c{i}", 4] for i in range(a, a + 5)]} for a in (0, 5, 10)]
    source.write_text("".join(json.dumps(b) + "\n" for b in batches) + '{"start": 15, "ou')
    compare_module._reuse_batches(source, cache, 12, 5)
    assert [json.loads(line)["start"] for line in cache.read_text().splitlines()] == [0, 5]
    cache.write_text("")
    compare_module._reuse_batches(source, cache, 12, 5)
    assert cache.read_text() == ""


def test_compare_on_an_explicit_device_names_it_and_rejects_unknown_ones(folders, tmp_path):
    res = compare({"ar": folders / "ar"}, folders / "valid.jsonl", tmp_path / "cpu", cfg=small_config(),
                  progress=False, device="cpu")
    assert res["sections"]["meta"]["device"].startswith("cpu (")
    assert res["config"]["shared"]["device"] == res["sections"]["meta"]["device"]  # a run on another device starts afresh
    with pytest.raises(InputError, match="unknown device 'gpu0'"):
        compare({"ar": folders / "ar"}, folders / "valid.jsonl", tmp_path / "x", device="gpu0")


def test_compare_bad_input(folders, tmp_path):
    with pytest.raises(InputError, match="not a language model"):  # an autoencoder is not a model to compare
        compare({"x": folders / "latent" / "autoencoder"}, folders / "valid.jsonl", tmp_path / "a",
                cfg=small_config(), progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError):
        compare({"ar": folders / "ar"}, empty, tmp_path / "b", cfg=small_config(), progress=False)
    short = tmp_path / "short.jsonl"
    short.write_text('{"text": "the end."}\n{"text": "hello there. bye."}\n')
    with pytest.raises(DataError, match="nothing to continue"):
        compare({"ar": folders / "ar"}, short, tmp_path / "c", cfg=small_config(), progress=False)
    with pytest.raises(InputError, match="judge must not be one of the compared"):
        compare({"ar": folders / "ar"}, folders / "valid.jsonl", tmp_path / "d", judge=folders / "ar",
                cfg=small_config(), progress=False)
    assert main(["compare", "--model", "noequals", "--data", str(folders / "valid.jsonl"), "--out",
                 str(tmp_path / "e")]) == 2


def test_compare_rejects_bad_generation_options_before_any_work(folders, tmp_path):
    with pytest.raises(InputError, match="'mdlm', which is not a compared model"):
        compare({"ar": folders / "ar"}, folders / "valid.jsonl", tmp_path / "a", options={"mdlm": {"num_inference_steps": 4}},
                cfg=small_config(), progress=False)
    with pytest.raises(InputError, match="no generation option 'decoderr'.*decoder"):
        compare({"mdlm": folders / "mdlm"}, folders / "valid.jsonl", tmp_path / "b",
                options={"mdlm": {"decoderr": "llada"}}, cfg=small_config(), progress=False)
    assert not (tmp_path / "b" / "results.json").exists()
    with pytest.raises(InputError, match="guidance_scale' does not apply to a mdlm model; it applies to latent"):
        compare({"mdlm": folders / "mdlm"}, folders / "valid.jsonl", tmp_path / "b",
                options={"mdlm": {"guidance_scale": 2.0}}, cfg=small_config(), progress=False)
    with pytest.raises(InputError, match="mdlm.num_inference_steps must be of type int, got 'many'"):
        compare({"mdlm": folders / "mdlm"}, folders / "valid.jsonl", tmp_path / "b",
                options={"mdlm": {"num_inference_steps": "many"}}, cfg=small_config(), progress=False)
    base = ["compare", "--model", f"mdlm={folders / 'mdlm'}", "--data", str(folders / "valid.jsonl")]
    assert main([*base, "--out", str(tmp_path / "c"), "--option", "decoder=llada"]) == 2  # no model name


def test_compare_cli_passes_generation_options(folders, tmp_path, monkeypatch):
    import latentlm.commands

    seen = {}

    def fake_compare(models, data, out, **kw):
        seen.update(kw)
        raise InputError("stop here")

    monkeypatch.setattr(latentlm.commands, "compare", fake_compare)  # the name the command calls
    assert main(["compare", "--model", f"mdlm={folders / 'mdlm'}", "--data", str(folders / "valid.jsonl"),
                 "--out", str(tmp_path / "d"), "--option", "mdlm.decoder=llada", "--option", "mdlm.num_inference_steps=16"]) == 2
    assert seen["options"] == {"mdlm": {"decoder": "llada", "num_inference_steps": 16}}


def test_interrupted_batches_are_not_redone(tmp_path):
    from latentlm.eval.compare import cached_batches

    calls = []

    def work(a, b, fail_at=None):
        if a == fail_at:
            raise KeyboardInterrupt
        calls.append(a)
        return list(range(a, b))

    cache = tmp_path / "job.partial"
    with pytest.raises(KeyboardInterrupt):
        cached_batches(cache, 10, 3, lambda a, b: work(a, b, fail_at=6))
    assert calls == [0, 3]
    with cache.open("a") as f:
        f.write('{"start": 6, "out": [6')  # a line cut by the interruption
    assert cached_batches(cache, 10, 3, work) == list(range(10))
    assert calls == [0, 3, 6, 9]  # only the unfinished batches ran again


def test_references_are_cut_by_words_whatever_the_tokenizer():
    from latentlm.eval.compare import cut_references

    text = "Lily ran.\n\nShe saw  a big dog. It barked!"
    assert cut_references([text], CompareConfig(reference_words=4)) == ["Lily ran.\n\nShe saw"]
    assert cut_references([text, "one two"], CompareConfig(reference_words=50)) == [text, "one two"]
    assert CompareConfig(max_new_tokens=128).words_per_reference() == 96  # 3/4 of the new tokens
    with pytest.raises(InputError, match="reference_words"):
        CompareConfig(reference_words=-1).validate()


@pytest.mark.parametrize("bad", [dict(prompts=0), dict(max_new_tokens=-1), dict(nll_samples=1),
                                 dict(speed_lengths=(128, 0)), dict(bootstrap=0)])
def test_compare_rejects_bad_sizes(folders, tmp_path, bad):
    with pytest.raises(InputError):
        compare({"ar": folders / "ar"}, folders / "valid.jsonl", tmp_path / "r", cfg=small_config(**bad),
                progress=False)


def test_compare_missing_files(folders, tmp_path):
    with pytest.raises(DataError):
        compare({"ar": folders / "ar"}, tmp_path / "nope.jsonl", tmp_path / "r", cfg=small_config(), progress=False)
    from latentlm.errors import CheckpointError

    with pytest.raises(CheckpointError):
        compare({"ar": tmp_path / "no_model"}, folders / "valid.jsonl", tmp_path / "r", cfg=small_config(),
                progress=False)


def test_cloze_draws_a_bounds_noise_per_story_and_shares_it_between_the_endings(folders):
    """A Monte Carlo bound scored from one seed for every ending gives all endings of one length the same
    draws, hence the same luck: a length bias. The endings of a story share a seed, the stories do not."""
    from latentlm.eval.compare import _cloze
    from latentlm.eval.models import load_language_model

    lm = load_language_model(folders / "latent", "latent")
    calls = []
    real_nll = lm.nll

    def recording_nll(texts, prefix_len=0, **kw):
        calls.append((texts[0][:prefix_len and None], kw["seed"], len(texts)))
        return real_nll(texts, prefix_len, **kw)

    lm.nll = recording_nll
    docs = ["lily had a red kite. she ran to the park. the kite flew high over the trees.",
            "tom saw a dog. the dog was big. tom gave it a bone.", "the sun was warm. ben sat down. he slept.",
            "amy lived near the lake. she had a boat. one day the boat was gone and amy was sad.",
            "a cat sat on the hill. the wind was cool. the cat went home."]
    out = _cloze(lm, docs, lm.context - 2, small_config(cloze_items=4))
    assert out["n"] == 4 and len(calls) == 8 and all(n == 1 for _, _, n in calls)  # one ending a call
    seeds = [seed for _, seed, _ in calls]
    assert all(seeds[i] == seeds[i + 1] for i in range(0, 8, 2))  # the two endings of a story
    assert len(set(seeds[::2])) == 4  # a seed of its own for every story


def test_results_written_under_a_renamed_option_are_reused(tmp_path):
    """A comparison saved when the steps option was called ``steps`` keeps its finished sections."""
    import json

    from latentlm.eval.compare import Results

    shared = {"data": "valid.jsonl"}
    old = {"config": {"shared": shared, "systems": {"latent": {"folder": "f", "options": {"steps": 32}}}},
           "sections": {"likelihood/latent": {"nats_per_token": 2.0},
                        "diversity/latent": {"curves": {"steps": [1], "decoder_temperature": [2]}}}}
    (tmp_path / "results.json").write_text(json.dumps(old))
    res = Results(tmp_path, shared, {"latent": {"folder": "f", "options": {"num_inference_steps": 32}}})
    assert res.done("likelihood/latent") and set(res["diversity/latent"]["curves"]) == {
        "num_inference_steps", "decoder_temperature"}
    other = Results(tmp_path, shared, {"latent": {"folder": "f", "options": {"num_inference_steps": 64}}})
    assert not other.done("likelihood/latent")  # a changed option is still a changed system


def test_a_stage_interrupted_keeps_the_wall_clock_it_spent(folders, tmp_path, monkeypatch):
    """A kill (Ctrl-C) in the middle of a stage adds the seconds it ran to that stage's total."""
    import time

    def interrupted(*args, **kwargs):
        time.sleep(0.3)
        raise KeyboardInterrupt

    monkeypatch.setattr(compare_module, "_likelihood", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compare({"ar": folders / "ar"}, folders / "valid.jsonl", tmp_path, cfg=small_config(), progress=False)
    seconds = json.loads((tmp_path / "results.json").read_text())["seconds"]
    assert seconds["likelihood ar"] >= 0.3


@pytest.mark.parametrize("damage", ["a list", "sections", "seconds"])
def test_a_damaged_results_file_is_read_without_a_crash(tmp_path, damage):
    """results.json edited by hand or cut short: what has the written structure is kept, the rest restarts."""
    from latentlm.eval.compare import Results

    shared = {"data": "valid.jsonl"}
    systems = {"ar": {"folder": "f", "options": {}}}
    good = {"config": {"shared": shared, "systems": systems}, "sections": {"likelihood/ar": {"nats_per_token": 2.0}},
            "seconds": {"likelihood ar": 3.0}}
    bad = {"a list": [good], "sections": {**good, "sections": ["likelihood/ar"]},
           "seconds": {**good, "seconds": [3.0]}}[damage]
    (tmp_path / "results.json").write_text(json.dumps(bad))
    res = Results(tmp_path, shared, systems)
    assert res.done("likelihood/ar") == (damage == "seconds")  # damaged stage times cost only the times
    assert res.data["seconds"] == {}
    res.add_seconds("likelihood ar", 1.0)
    assert json.loads((tmp_path / "results.json").read_text())["seconds"] == {"likelihood ar": 1.0}
