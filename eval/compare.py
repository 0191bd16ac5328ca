"""``latentlm compare``: likelihood, sample quality, long-range consistency and speed in one report.

    compare({"latent": DIR, "mdlm": DIR, "ar": DIR}, data="test.jsonl", out="report/",
            train="train.jsonl", judge=DIR)

Writes ``report.md``, ``results.json`` (updated after every section, so an
interrupted run keeps what it finished and a rerun skips it), PNG plots and
the raw samples (``samples/*.jsonl``). Systems scored on the sample metrics:
each model (samples pooled over seeds), the real continuations of the same
openings, and the sanity samplers (a metric on which one of them beats real
text is marked hackable). Intervals are 95%: percentile bootstraps over samples for
per-text statistics, half-samples of the openings placed around the full sample's value for
statistics of the pooled sample (word entropy, distinct-2, MAUVE), which depend on its size.
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
import random
import re
import statistics
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from glob import escape as glob_escape
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from latentlm.data.readers import read_documents
from latentlm.data.synthetic import check_story, split_sentences
from latentlm.device import device_name, resolve_device
from latentlm.errors import DataError, InputError, LatentLMError
from latentlm.eval import consistency as cons
from latentlm.eval import metrics as M
from latentlm.eval.compare_config import CompareConfig
from latentlm.eval.models import ARAdapter, load_language_model
from latentlm.eval.report import write_report
from latentlm.eval.sanity import sanity_samplers
from latentlm.eval.speed import measure_speed, rows_to_json
from latentlm.files import write_text_atomic
from latentlm.kinds import GENERATION_OPTIONS, check_options, get_kind, writing_kinds

REAL = "real text"


def default_options(kind: str) -> dict:
    """compare's generation options for a model of ``kind`` (:attr:`ModelKind.compare_options`)."""
    return dict(get_kind(kind).compare_options)


def diversity_knobs(kind: str) -> dict[str, tuple]:
    """Option -> values that trade quality for diversity, one curve each (:attr:`ModelKind.diversity_knobs`;
    PTP samples its AR's very texts: no curve)."""
    return dict(get_kind(kind).diversity_knobs)


@dataclass
class System:
    """Samples of one model or baseline text source: openings and their continuations."""

    name: str
    prompts: list[str]
    continuations: list[str]
    texts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.texts:
            self.texts = [p + " " + c for p, c in zip(self.prompts, self.continuations)]


# ----------------------------------------------------------------------------- data


def is_synthetic(docs: list[str]) -> bool:
    """True when the documents are built-in synthetic stories (they all parse under the checker)."""
    return all(check_story(d).well_formed_rate == 1.0 for d in docs[:20])


def openings(docs: list[str], n: int, cfg: CompareConfig, synthetic: bool) -> list[tuple[str, str]]:
    """(opening, real continuation) pairs from up to ``n`` documents (a seeded sample)."""
    pairs = []
    for d in docs:
        sents = split_sentences(d)
        if synthetic:
            k = 0
            for s in check_story(d).sentences:
                if s.role is None or not s.role.startswith("intro"):
                    break
                k += 1
        else:
            k = cfg.prompt_sentences
        if 0 < k < len(sents) - 1:
            pairs.append((" ".join(sents[:k]), " ".join(sents[k:])))
    if not pairs:
        raise DataError(f"no document has more than {cfg.prompt_sentences + 1} sentences: nothing to continue")
    return random.Random(cfg.seed).sample(pairs, min(n, len(pairs)))


# ----------------------------------------------------------------------------- results file


# sections computed over every system: recomputed when a system is added, changed or removed (their
# per-system parts are cached: quality.partial, the sample files, the per-system sections)
AGGREGATE_SECTIONS = ("quality", "diversity", "consistency", "nfe_sweep", "speed", "skipped", "meta")
# generation options renamed since a results.json may have been written: read under their current names
RENAMED_OPTIONS = {"steps": "num_inference_steps"}


def _readable(old) -> bool:
    """Whether a loaded results.json has the structure :class:`Results` writes."""
    return (isinstance(old, dict) and isinstance(old.get("config"), dict) and isinstance(old.get("sections"), dict)
            and isinstance(old["config"].get("systems", {}), dict)
            and all(isinstance(spec, dict) for spec in old["config"].get("systems", {}).values()))


def _migrate(old: dict) -> dict:
    """A results.json written before an option was renamed (:data:`RENAMED_OPTIONS`), under the current
    names: each system's options and the knobs of its quality-entropy curves."""
    for spec in old.get("config", {}).get("systems", {}).values():
        if isinstance(spec, dict) and isinstance(spec.get("options"), dict):
            spec["options"] = {RENAMED_OPTIONS.get(k, k): v for k, v in spec["options"].items()}
    for key, section in old.get("sections", {}).items():
        if key.startswith("diversity/") and isinstance(section, dict) and isinstance(section.get("curves"), dict):
            section["curves"] = {RENAMED_OPTIONS.get(k, k): v for k, v in section["curves"].items()}
    return old


class Results:
    """results.json, rewritten atomically after every section; finished sections are reused.

    ``shared``: what every number depends on (data, judge, settings); ``systems``: name -> what one
    system's numbers depend on (its folder and options). Another ``shared`` discards everything; a
    system added, changed or removed costs only its own sections and files and the aggregate sections
    (so a row can join a finished comparison)."""

    def __init__(self, out: Path, shared: dict, systems: dict[str, dict]) -> None:
        self.out = out
        self.path = out / "results.json"
        # sections, and the wall-clock of each stage of compare summed over every run that worked on it
        self.data: dict = {"config": {"shared": shared, "systems": systems}, "sections": {}, "seconds": {}}
        try:
            old = json.loads(self.path.read_text()) if self.path.is_file() else None
        except json.JSONDecodeError:
            old = None
        old = _migrate(old) if _readable(old) else None  # damaged: as if another configuration
        if old is not None and old["config"].get("shared") == shared:
            before = old["config"].get("systems", {})
            stale = [n for n, spec in before.items() if systems.get(n) != spec]
            self.data["sections"] = old["sections"]
            seconds = old.get("seconds")
            if isinstance(seconds, dict) and all(isinstance(v, (int, float)) for v in seconds.values()):
                self.data["seconds"] = seconds  # else the stage times alone are lost, not the sections
            for name in stale:
                self._forget(name)
            if stale or set(systems) - set(before):
                for key in AGGREGATE_SECTIONS:
                    self.data["sections"].pop(key, None)
        else:  # another configuration: nothing of a previous run may be reused
            for stale_file in [*out.glob("*.partial"), *out.glob("samples/*")]:
                stale_file.unlink()
        self._write()  # at once: partial files of this configuration are now tied to it

    def _forget(self, name: str) -> None:
        """Drop the sections and cached files of system ``name``."""
        sections = self.data["sections"]
        for key in [k for k in sections if k.endswith(f"/{name}")]:
            del sections[key]
        seconds = self.data["seconds"]
        for label in [k for k in seconds if k.endswith(f" {name}")]:
            del seconds[label]
        slug = _slug(name)
        files = [*self.out.glob(f"samples/{glob_escape(name)}_seed*"), self.out / f"likelihood_{slug}.partial",
                 self.out / f"cloze_{slug}.partial"]
        for knob in {k for kind in writing_kinds() for k in kind.diversity_knobs}:
            files += self.out.glob(f"samples/curve_{slug}_{knob}_*")
        for f in files:
            f.unlink(missing_ok=True)
        quality = self.out / "quality.partial"
        if quality.is_file():
            kept = []
            for line in quality.read_text().splitlines():
                try:
                    if json.loads(line)["name"] == name:
                        continue
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
                kept.append(line + "\n")
            write_text_atomic(quality, "".join(kept))

    def done(self, key: str) -> bool:
        return key in self.data["sections"]

    def __getitem__(self, key: str):
        return self.data["sections"][key]

    def put(self, key: str, value) -> None:
        self.data["sections"][key] = value
        self._write()

    def add_seconds(self, stage: str, seconds: float) -> None:
        """Add ``seconds`` of wall-clock to ``stage`` (a label such as ``generate ar``)."""
        self.data["seconds"][stage] = self.data["seconds"].get(stage, 0.0) + seconds  # rounded where printed
        self._write()

    def _write(self) -> None:
        write_text_atomic(self.path, json.dumps(self.data, indent=1, default=_json_default))


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x)}")


def _ci(items, stat: Callable[[list], float], cfg: CompareConfig) -> list[float]:
    return list(M.bootstrap_ci(items, stat, n_boot=cfg.bootstrap, seed=cfg.seed))


def _ratio_ci(rows: list, num: int, den: int, cfg: CompareConfig) -> list[float]:
    """Bootstrap interval of sum(row[num]) / sum(row[den]) over rows (per-story counts, per-text nats)."""
    return _ci(rows, lambda xs: sum(x[num] for x in xs) / max(1, sum(x[den] for x in xs)), cfg)


def _likelihood(lm, docs: list[str], cfg: CompareConfig, cache: Path) -> dict:
    """The likelihood section of one model: nats/token (exact, or a Monte Carlo bound with its standard
    error), bits/char and a bootstrap interval over texts, on ``cfg.nll_texts`` seeded documents; each
    finished batch is cached."""
    texts = random.Random(cfg.seed).sample(docs, min(cfg.nll_texts, len(docs)))
    kw = {} if lm.exact else {"n_samples": cfg.nll_samples}

    def score(a: int, b: int) -> list:
        r = lm.nll(texts[a:b], seed=a, **kw) if kw else lm.nll(texts[a:b])
        return [list(x) for x in zip(r.per_text, r.per_text_se, r.per_text_tokens, r.per_text_chars)]

    per = cached_batches(cache, len(texts), cfg.batch_size, score)
    nats, ses, toks, chars = (list(x) for x in zip(*per))
    n_tok = sum(toks)
    return {"nats_per_token": sum(nats) / n_tok, "stderr": math.sqrt(sum(x * x for x in ses)) / n_tok,
            "bits_per_char": sum(nats) / math.log(2) / sum(chars), "exact": lm.exact, "n_tokens": n_tok,
            "ci": _ratio_ci(list(zip(nats, toks)), 0, 1, cfg)}


def _system_samples(lm, name: str, prompts: list[str], options: dict, cfg: CompareConfig, out: Path,
                    res: Results) -> System:
    """One model's continuations of ``prompts``, ``cfg.seeds`` samples each (seed s at rows s x n ...),
    read from ``out/samples`` when written before, else generated (cached per batch); a PTP model's
    losslessness against its AR is checked on the first seed."""
    conts, texts = [], []
    for s in range(cfg.seeds):
        path = _main_samples_path(out, name, s)
        rows = _load_samples(path, len(prompts))
        if rows is None:
            rows, _ = generate_samples(lm, prompts, cfg, options, seed=cfg.seed + s, cache=path.with_suffix(".partial"))
            _write_samples(path, prompts, rows)
        conts += [c for _, c in rows]
        texts += [t for t, _ in rows]
        if s == 0 and lm.kind == "ptp" and not res.done(f"lossless/{name}"):
            res.put(f"lossless/{name}", _lossless(lm, prompts, cfg, options, rows))
    return System(name, prompts * cfg.seeds, conts, texts)


# ----------------------------------------------------------------------------- main


def compare(
    models: dict[str, str | Path],
    data: str | Path,
    out: str | Path,
    *,
    train: str | Path | None = None,
    judge: str | Path | None = None,
    cfg: CompareConfig | None = None,
    options: dict[str, dict] | None = None,
    progress: bool = True,
    device: str = "auto",
) -> dict:
    """Evaluate ``models`` (name -> folder) on the documents of ``data`` and write the report to ``out``.

    ``train`` (the training texts) enables memorisation, the name lexicon of
    the entity probe and the sanity samplers; ``judge`` (an AR model folder,
    never one of the compared models) enables generation perplexity. ``device``: where every
    model runs (``"auto"``: the GPU when there is one, else the CPU; or ``"cpu"``, ``"cuda:N"``).
    Returns the results dictionary (also in ``out/results.json``).
    """
    cfg = cfg or CompareConfig()
    cfg.validate()
    if not models:
        raise InputError("no model to compare: pass at least one --model NAME=DIR")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples").mkdir(exist_ok=True)
    docs = read_documents([data])
    if not docs:
        raise DataError(f"{data} holds no text")
    train_docs = read_documents([train]) if train else []
    device = resolve_device(device)
    lms = {name: load_language_model(folder, name, device) for name, folder in models.items()}
    judge_lm = load_language_model(judge, "judge", device) if judge else None
    if judge_lm is not None and judge_lm.kind != "ar":
        raise InputError(f"the judge {judge} is a {judge_lm.kind} model; it must be an autoregressive model")
    if judge and any(Path(judge).resolve() == Path(f).resolve() for f in models.values()):
        raise InputError("the judge must not be one of the compared models")
    _check_options(options or {}, lms)
    opts = {name: {**default_options(lm.kind), **(options or {}).get(name, {})} for name, lm in lms.items()}
    synthetic = is_synthetic(docs)
    shared = {"data": str(data), "train": str(train), "judge": str(judge), "device": device_name(device),
              **asdict(cfg)}
    per_system = {name: {"folder": str(models[name]), "options": opts[name]} for name in lms}
    res = Results(out, json.loads(json.dumps(shared)), json.loads(json.dumps(per_system)))
    pairs = openings(docs, cfg.prompts, cfg, synthetic)
    prompts = [p for p, _ in pairs]
    real_conts = cut_references([c for _, c in pairs], cfg)
    n_words = max(1, int(statistics.median(len(c.split()) for c in real_conts)))
    steps_total = 3 * len(lms) + 3 + (1 if cfg.nfe_sweep else 0) + (1 if cfg.curves else 0)
    bar = tqdm(total=steps_total, desc="compare", disable=not progress)
    skipped: dict[str, str] = {}

    clock = {"stage": "", "since": time.monotonic()}

    def stage(name: str) -> None:
        """Start stage ``name`` ("" at the end): the one before gets its wall-clock."""
        now = time.monotonic()
        if clock["stage"]:
            res.add_seconds(clock["stage"], now - clock["since"])
        clock.update(stage=name, since=now)
        bar.set_postfix_str(name)

    try:
        # --- likelihood -----------------------------------------------------------------
        for name, lm in lms.items():
            stage(f"likelihood {name}")
            key = f"likelihood/{name}"
            if not res.done(key):
                res.put(key, _likelihood(lm, docs, cfg, out / f"likelihood_{_slug(name)}.partial"))
            bar.update(1)

        # --- samples --------------------------------------------------------------------
        systems: list[System] = []
        for name, lm in lms.items():
            stage(f"generate {name}")
            systems.append(_system_samples(lm, name, prompts, opts[name], cfg, out, res))
            bar.update(1)
        stage("reference and sanity samples")
        real = System(REAL, prompts, real_conts)
        systems.append(real)
        if train_docs:
            for s in sanity_samplers(train_docs):
                systems.append(System(s.name, prompts, s.generate(prompts, n_words, seed=cfg.seed)))
        else:
            skipped["sanity samplers, memorisation, entity persistence"] = "no --train texts given"
        for s in systems:
            _write_samples(samples_path(out, s.name), s.prompts, list(zip(s.texts, s.continuations)))
        bar.update(1)

        # --- sample quality ---------------------------------------------------------------
        stage("sample quality")
        if not res.done("quality") or res["quality"].get("corpus_intervals") != CORPUS_INTERVALS:
            res.put("quality", _quality(systems, real, docs, pairs, train_docs, judge_lm, cfg, skipped,
                                        out / "quality.partial"))
        bar.update(1)

        # --- long-range consistency (the main samples: minutes, before the curves' hours) ---
        stage("consistency")
        if not res.done("consistency"):
            res.put("consistency", _consistency(systems, real, synthetic, train_docs, cfg, skipped))

        # --- quality against diversity --------------------------------------------------
        if cfg.curves:
            if judge_lm is None:
                skipped["quality-entropy curves"] = "no --judge model given"
            else:
                # the models that sampled fastest first: a run stopped here keeps the most finished rows
                seconds = res.data["seconds"]
                for name in sorted(lms, key=lambda n: seconds.get(f"generate {n}", float("inf"))):
                    lm = lms[name]
                    stage(f"quality vs entropy {name}")
                    if not res.done(f"diversity/{name}") and diversity_knobs(lm.kind):
                        res.put(f"diversity/{name}", _diversity_curves(lm, name, opts[name], pairs, judge_lm, cfg, out))
                    res.put("diversity", _matched(res, lms, pairs, cfg))  # every finished curve's crossing
            bar.update(1)

        for name, lm in lms.items():
            stage(f"cloze {name}")
            key = f"cloze/{name}"
            context = min(m.context for m in lms.values()) - 2  # every model reads the same stories
            cache = out / f"cloze_{_slug(name)}.partial"
            shorter = res.done(key) and res[key].get("context") != context  # a model of shorter context joined
            if shorter:
                cache.unlink(missing_ok=True)
            if shorter or not res.done(key):
                res.put(key, _cloze(lm, docs, context, cfg, cache))
            bar.update(1)

        # --- quality vs NFE ---------------------------------------------------------------
        if cfg.nfe_sweep:
            for name, lm in lms.items():
                stage(f"quality vs NFE {name}")
                if not res.done(f"nfe_sweep/{name}"):
                    rows = _nfe_sweep(name, lm, opts[name], prompts[: cfg.sweep_prompts], judge_lm, synthetic, cfg)
                    res.put(f"nfe_sweep/{name}", rows)
            res.put("nfe_sweep", [row for name in lms for row in res[f"nfe_sweep/{name}"]])
            bar.update(1)

        # --- speed ------------------------------------------------------------------------
        for name, lm in lms.items():
            stage(f"speed {name}")
            if not res.done(f"speed/{name}"):
                res.put(f"speed/{name}", rows_to_json(measure_speed(lm, name, prompts[0], list(cfg.speed_lengths),
                                                                     cfg.speed_batch, opts[name])))
        res.put("speed", [row for name in lms for row in res[f"speed/{name}"]])
        bar.update(1)
    finally:  # an interrupted stage keeps the wall-clock it spent
        stage("")
    bar.close()
    res.put("skipped", {**res.data["sections"].get("skipped", {}), **skipped})
    res.put("meta", {"synthetic": synthetic, "n_prompts": len(prompts), "device": device_name(device),
                     "torch_threads": torch.get_num_threads(), "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    write_report(res.data, out)
    return res.data


# ----------------------------------------------------------------------------- pieces


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def samples_path(out: str | Path, name: str) -> Path:
    """The file of system ``name``'s samples (JSON lines: prompt, continuation, text) in report ``out``."""
    return Path(out) / "samples" / f"{_slug(name)}.jsonl"


def _main_samples_path(out: Path, name: str, seed_index: int) -> Path:
    """The main table's samples of system ``name`` at its ``seed_index``-th seed (its batch cache: ``.partial``)."""
    return out / "samples" / f"{name}_seed{seed_index}.jsonl"


def _load_samples(path: Path, n: int) -> list[tuple[str, str]] | None:
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["text"], r["continuation"]) for r in rows] if len(rows) == n else None


def _write_samples(path: Path, prompts: list[str], rows: list[tuple[str, str]]) -> None:
    write_text_atomic(path, "".join(json.dumps({"prompt": p, "continuation": c, "text": t}) + "\n"
                                    for p, (t, c) in zip(prompts, rows)))


def cached_batches(path: Path | None, n_items: int, batch: int, fn: Callable[[int, int], list]) -> list:
    """``fn(start, stop)`` over consecutive batches of ``n_items``, each finished batch appended to the
    JSONL file ``path`` at once: an interrupted job reruns only the batch it was in."""
    done: dict[int, list] = {}
    if path is not None and path.is_file():
        good = []
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
                done[rec["start"]] = rec["out"]
                good.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut by the interruption: that batch is redone
        write_text_atomic(path, "".join(g + "\n" for g in good))
    out = []
    for start in range(0, n_items, batch):
        if start not in done:
            done[start] = fn(start, min(start + batch, n_items))
            if path is not None:
                with path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"start": start, "out": done[start]}, default=_json_default) + "\n")
        out += done[start]
    return out


def _check_options(options: dict[str, dict], lms: dict) -> None:
    """Reject options for a model not compared, or that its ``generate`` does not take, before any work."""
    for name, opts in options.items():
        if name not in lms:
            raise InputError(f"generation options for {name!r}, which is not a compared model "
                             f"(models: {', '.join(lms)})")
        check_options(get_kind(lms[name].kind), {k: v for k, v in opts.items() if k in GENERATION_OPTIONS},
                      where=f"{name}'s generation option")
        fixed = {"self", "prompts", "max_new_tokens", "generator"}
        params = {k: p for k, p in inspect.signature(lms[name].generate).parameters.items() if k not in fixed}
        for key, value in opts.items():
            if key not in params:
                raise InputError(f"{name} ({lms[name].kind} model) has no generation option {key!r}; "
                                 f"valid: {', '.join(params)}")
            default = params[key].default  # the value's type must match the default's (int also fits float)
            want = float if isinstance(default, float) else type(default) if default is not None else str
            if isinstance(value, bool) or not isinstance(value, (int, float) if want is float else want):
                raise InputError(f"generation option {name}.{key} must be of type {want.__name__}, got {value!r}")


def generate_samples(lm, prompts: list[str], cfg: CompareConfig, options: dict, seed: int,
              cache: Path | None = None) -> tuple[list[tuple[str, str]], int]:
    """(text, continuation) per prompt and the NFE per sample; batch i is seeded by (seed, i), so a
    resumed run gives the samples of an uninterrupted one."""
    nfe = {"n": 0}

    def run(a: int, b: int) -> list:
        g = torch.Generator().manual_seed(seed * 1_000_003 + a)
        gen = lm.generate(prompts[a:b], cfg.max_new_tokens, generator=g, **options)
        return [[t, c, gen.nfe] for t, c in zip(gen.texts, gen.continuations)]

    rows = cached_batches(cache, len(prompts), cfg.batch_size, run)
    nfe["n"] = max(r[2] for r in rows)
    return [(t, c) for t, c, _ in rows], nfe["n"]


def _lossless(lm, prompts: list[str], cfg: CompareConfig, options: dict, rows: list[tuple[str, str]]) -> dict:
    """PTP's samples against its own AR's at the same seed, sampled token by token: they must be identical."""
    ar_options = {k: v for k, v in options.items() if k != "draft_tokens"}
    reference, _ = generate_samples(ARAdapter(lm.model, lm.tokenizer, lm.name), prompts, cfg, ar_options, seed=cfg.seed)
    return {"identical": sum(a == b for a, b in zip(reference, rows)), "n": len(rows)}


def judge_scores(judge, system: System) -> list[tuple[float, int]]:
    """(nats, tokens) of each continuation of ``system`` given its opening, under the ``judge`` adapter
    (generation perplexity's parts; openings longer than the judge's context are left out)."""
    prefix = [len(judge.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in system.prompts]
    texts, ok = [], []
    for t, p in zip(system.texts, prefix):
        n = len(judge.tokenizer(t, add_special_tokens=False)["input_ids"])
        if p < min(n, judge.context - 2):
            texts.append(t)
            ok.append(p)
    r = judge.nll(texts, prefix_len=ok)
    return list(zip(r.per_text, r.per_text_tokens))


def perplexity(xs: list[tuple[float, int]]) -> float:
    """exp(total nats / total tokens) of (nats, tokens) pairs: a corpus perplexity."""
    return math.exp(sum(a for a, _ in xs) / sum(b for _, b in xs))


METRIC_DIRECTION = {  # +1 higher is better, -1 lower is better
    "gen_ppl": -1, "mauve": +1, "entropy": +1, "rep4": -1, "distinct2": +1, "self_bleu": -1, "memorised8": -1,
    "well_formed": +1, "consistent": +1, "known_names": +1, "new_names": -1,
    **{f"coherence_d{d}": +1 for d in range(1, 65)},
}


def mauve_references(docs: list[str], pairs: list[tuple[str, str]], real: list[str], cfg: CompareConfig,
                     train_docs: list[str] = ()) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    """Sentence features of the real continuations ``real`` (of the openings ``pairs``), which every
    system's MAUVE is measured against, and of the data-vs-data ceiling: as many real continuations of
    other stories, cut to the same length. They come from the held-out openings ``pairs`` leaves out
    and, when those are too few (every opening of the split is compared), from ``train_docs``. Returns
    (real features, ceiling features or None, why the ceiling is missing or None). Raises DataError when
    there are fewer than 10 openings."""
    if len(real) < 10:
        raise DataError(f"MAUVE needs 10+ openings with a continuation (have {len(real)})")
    used = {p for p, _ in pairs}
    other: list[str] = []
    for source in (docs, train_docs):
        if len(other) >= len(real) or not source:
            continue
        try:
            more = openings(source, len(source), cfg, is_synthetic(source))
        except DataError:
            continue
        other += [c for p, c in more if p not in used][: len(real) - len(other)]
    ref_other = cut_references(other, cfg)
    if len(ref_other) < 10:
        return M.sentence_embeddings(real), None, (
            f"the data-vs-data ceiling needs 10+ stories besides the compared openings (have {len(ref_other)}; "
            "pass --train to draw them from the training texts)")
    return M.sentence_embeddings(real), M.sentence_embeddings(ref_other), None


def _quality(systems, real, docs, pairs, train_docs, judge_lm, cfg, skipped,
             cache: Path | None = None) -> dict:
    """Per system: entropy, distinct-2, rep-4, self-BLEU, memorisation, judge perplexity and MAUVE with
    their intervals. Each finished system's row is appended to ``cache`` (JSONL) at once, so an
    interrupted run redoes only the system it was scoring."""
    rows: dict[str, dict] = {}
    if cache is not None and cache.is_file():
        for line in cache.read_text().splitlines():
            try:
                rec = json.loads(line)
                rows[rec["name"]] = rec["row"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut by the interruption: that system is scored again
    index = M.NgramIndex(train_docs, 8) if train_docs else None
    feats_real = feats_ceiling = None
    if cfg.mauve:
        try:
            feats_real, feats_ceiling, why = mauve_references(docs, pairs, real.continuations, cfg, train_docs)
            if why:
                skipped["mauve of real text (the ceiling)"] = why
        except DataError as e:
            skipped["mauve"] = str(e)
    if judge_lm is None:
        skipped["generation perplexity"] = "no --judge model given"
    n = len(real.continuations)  # samples per seed (models hold seeds x openings, opening i at rows i, n + i, ...)
    for s in tqdm(systems, desc="quality", leave=False):
        c = s.continuations
        openings = [i % n for i in range(len(c))]
        if s.name in rows:  # scored before: only the cheap corpus statistics are recomputed
            rows[s.name].update(_corpus_statistics(c, openings, cfg))
            continue
        r: dict = {"n": len(c), **_corpus_statistics(c, openings, cfg)}
        r["rep4"], r["rep4_ci"] = M.rep_n(c, 4), _ci(c, lambda x: M.rep_n(x, 4), cfg)
        nonempty = [x for x in c if x.strip()]
        r["self_bleu"] = M.self_bleu(nonempty) if len(nonempty) >= 2 else None
        if index is not None:
            r["memorised8"], r["memorised8_ci"] = index.memorised(c), _ci(c, index.memorised, cfg)
        if judge_lm is not None:
            scores = judge_scores(judge_lm, s)
            r["gen_ppl"], r["gen_ppl_ci"] = perplexity(scores), _ci(scores, perplexity, cfg)
        if feats_real is not None and not (s.name == REAL and feats_ceiling is None):
            # real text is scored against other stories: the data-vs-data ceiling
            feats = feats_ceiling if s.name == REAL else M.sentence_embeddings(c)
            groups = [n + i for i in range(len(feats))] if s.name == REAL else [i % n for i in range(len(c))]
            r["mauve"] = M.mauve_score(feats, feats_real, seed=cfg.seed)
            if cfg.mauve_bootstrap and n >= 20:  # half-samples of 10+ openings
                r["mauve_ci"] = list(M.mauve_interval(feats, feats_real, groups, range(n), n_boot=cfg.mauve_bootstrap,
                                                      seed=cfg.seed, point=r["mauve"]))
        rows[s.name] = r
        if cache is not None:
            with cache.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"name": s.name, "row": r}, default=_json_default) + "\n")
    rows = {s.name: rows[s.name] for s in systems}
    return {"rows": rows, "hackable": _hackable(rows), "corpus_intervals": CORPUS_INTERVALS}


# how the quality rows' entropy_ci and distinct2_ci are drawn: a quality section drawn otherwise is redone
# (its judge and MAUVE parts come from quality.partial)
CORPUS_INTERVALS = "half-samples of openings"


def _corpus_statistics(texts: list[str], openings: list[int], cfg: CompareConfig) -> dict:
    """Word entropy and distinct-2 of the pooled texts, with intervals from half-samples of the openings
    (resampling with replacement would duplicate texts and bias both) when there are 20 or more."""
    out: dict = {}
    for key, fn in (("entropy", M.unigram_entropy), ("distinct2", lambda x: M.distinct_n(x, 2))):
        out[key] = fn(texts)
        if len(set(openings)) >= 20:
            out[f"{key}_ci"] = list(M.corpus_interval(texts, openings, fn, n_boot=cfg.bootstrap, seed=cfg.seed,
                                                      point=out[key]))
    return out


def _diversity_curves(lm, name: str, options: dict, pairs: list[tuple[str, str]], judge, cfg: CompareConfig,
                      out: Path) -> dict:
    """Judge perplexity, word entropy and MAUVE of one sample per opening for the first
    ``cfg.curve_prompts`` openings at each value of each of the model's diversity knobs
    (:func:`diversity_knobs`); the other options as in the main table. Samples are cached per batch."""
    pairs = pairs[: cfg.curve_prompts]
    prompts = [p for p, _ in pairs]
    feats_real = M.sentence_embeddings(cut_references([c for _, c in pairs], cfg)) if cfg.mauve else None
    curves = {}
    for knob, values in diversity_knobs(lm.kind).items():
        points = []
        for v in values:
            cache = out / "samples" / f"curve_{_slug(name)}_{knob}_{v}.partial"
            if _option_value(lm, options, knob) == v:  # the main table's options: its first seed's batches
                _reuse_batches(_main_samples_path(out, name, 0).with_suffix(".partial"), cache, len(prompts),
                               cfg.batch_size)
            rows, nfe = generate_samples(lm, prompts, cfg, {**options, knob: v}, seed=cfg.seed, cache=cache)
            s = System(name, prompts, [c for _, c in rows], [t for t, _ in rows])
            point = {"value": v, "nfe": nfe, "entropy": M.unigram_entropy(s.continuations),
                     "rep4": M.rep_n(s.continuations, 4), "gen_ppl": perplexity(judge_scores(judge, s))}
            if feats_real is not None:
                point["mauve"] = M.mauve_score(M.sentence_embeddings(s.continuations), feats_real, seed=cfg.seed)
            points.append(point)
        curves[knob] = points
    return {"curves": curves, "n": len(prompts)}


_NO_DEFAULT = object()


def _option_value(lm, options: dict, knob: str):
    """The value ``lm.generate`` samples with for ``knob`` under ``options``: given, else its default."""
    if knob in options:
        return options[knob]
    p = inspect.signature(lm.generate).parameters.get(knob)
    return _NO_DEFAULT if p is None or p.default is p.empty else p.default


def _reuse_batches(source: Path, cache: Path, n: int, batch: int) -> None:
    """Start the batch cache of ``n`` openings from the batches of ``source`` (a cache of the same
    options, seed and openings in the same order, over these ``n`` and maybe more) that cover the same
    openings: batch i is seeded by (seed, i) either way (:func:`generate_samples`), so they are the very
    samples it would draw. A curve point at the main table's options then costs no sampling."""
    if cache.exists() or not source.is_file():
        return
    kept = []
    for line in source.read_text().splitlines():
        try:
            rec = json.loads(line)
            start, rows = rec["start"], rec["out"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut by an interruption
        if isinstance(start, int) and 0 <= start < n and start % batch == 0 and len(rows) == min(start + batch, n) - start:
            kept.append(line + "\n")
    if kept:
        write_text_atomic(cache, "".join(kept))


def cut_references(texts: list[str], cfg: CompareConfig) -> list[str]:
    """``texts`` (real continuations) cut after their first :meth:`CompareConfig.words_per_reference` words,
    whitespace inside kept: the same references whichever models are compared, in whatever order."""
    n = cfg.words_per_reference()
    out = []
    for text in texts:
        ends = [m.end() for m in itertools.islice(re.finditer(r"\S+", text), n)]
        out.append(text[: ends[-1]] if len(ends) == n else text)
    return out


def _matched(res: Results, lms: dict, pairs: list[tuple[str, str]], cfg: CompareConfig) -> dict:
    """Real text's word entropy on the curves' openings, and per model the judge perplexity and MAUVE
    interpolated where its curves cross it (``gen_ppl`` None: no curve reaches it); of several
    crossings, the lowest perplexity and its knob."""
    target = M.unigram_entropy(cut_references([c for _, c in pairs[: cfg.curve_prompts]], cfg))
    matched: dict[str, dict] = {}
    for name in lms:
        if not res.done(f"diversity/{name}"):
            continue
        best = {"gen_ppl": None, "mauve": None, "knob": None}
        for knob, points in res[f"diversity/{name}"]["curves"].items():
            pts = [(p["entropy"], math.log(p["gen_ppl"]), p.get("mauve", math.nan)) for p in points]
            hit = M.value_at(pts, target)
            if hit is not None and (best["gen_ppl"] is None or math.exp(hit[0]) < best["gen_ppl"]):
                best = {"gen_ppl": math.exp(hit[0]), "mauve": None if math.isnan(hit[1]) else hit[1], "knob": knob}
        matched[name] = best
    return {"real_entropy": target, "matched": matched}


def _hackable(rows: dict[str, dict]) -> dict[str, list[str]]:
    """metric -> sanity samplers that beat real text on it."""
    out = {}
    real = rows.get(REAL, {})
    for metric, sign in METRIC_DIRECTION.items():
        if real.get(metric) is None:
            continue
        beats = [n for n, r in rows.items() if n.startswith("sanity") and r.get(metric) is not None
                 and not (isinstance(r[metric], float) and math.isnan(r[metric]))
                 and sign * (r[metric] - real[metric]) > 0]
        if beats:
            out[metric] = beats
    return out


def _consistency(systems, real, synthetic, train_docs, cfg, skipped) -> dict:
    out: dict = {"probe": {}, "entities": {}, "coherence": {}}
    if synthetic:
        for s in systems:
            try:
                p = cons.synthetic_probe(s.prompts, s.texts)
            except DataError as e:
                out["probe"][s.name] = {"skipped": str(e)}
                continue
            ps = p.per_story
            out["probe"][s.name] = {
                "well_formed": p.well_formed, "consistent": p.consistent, "by_distance": p.by_distance,
                "well_formed_ci": _ratio_ci(ps, 0, 1, cfg), "consistent_ci": _ratio_ci(ps, 2, 3, cfg)}
    else:
        skipped["synthetic probe"] = "the data are not synthetic stories (run it on `latentlm data synthetic` output)"
    names = cons.name_lexicon(train_docs) if train_docs else set()
    for s in systems:
        try:
            e = cons.entity_persistence(s.prompts, s.continuations, names)
        except DataError as err:
            out["entities"][s.name] = {"skipped": str(err)}
            continue
        ps = e.per_story
        out["entities"][s.name] = {
            "known_names": e.known_share, "new_names": e.new_name_rate, "mentions": e.n_mentions,
            "known_names_ci": _ratio_ci(ps, 0, 1, cfg), "new_names_ci": _ratio_ci(ps, 2, 3, cfg)}
    try:
        embed = M.sentence_embeddings
        shuffled = cons.shuffled_similarity(real.texts, cfg.window, embed, seed=cfg.seed)
        real_sim = cons.window_similarity(real.texts, cfg.window, cfg.distances, embed)
        out["coherence"]["shuffled_similarity"] = shuffled
        out["coherence"]["real_similarity"] = real_sim
        out["coherence"]["curves"] = {}
        for s in systems:
            try:
                sim = cons.window_similarity(s.texts, cfg.window, cfg.distances, embed)
                out["coherence"]["curves"][s.name] = cons.coherence_curve(sim, real_sim, shuffled)
            except DataError as err:
                out["coherence"]["curves"][s.name] = {"skipped": str(err)}
    except DataError as err:
        skipped["coherence"] = str(err)
    flat: dict[str, dict] = {}
    for name, v in out["probe"].items():
        flat.setdefault(name, {})["consistent"] = v.get("consistent")
    for name, v in out["entities"].items():
        flat.setdefault(name, {}).update(known_names=v.get("known_names"), new_names=v.get("new_names"))
    for name, v in out.get("coherence", {}).get("curves", {}).items():
        if "skipped" not in v:
            flat.setdefault(name, {}).update({f"coherence_d{d}": x for d, x in v.items()})
    out["hackable"] = _hackable(flat)
    return out


def _cloze(lm, docs, context: int, cfg, cache: Path | None = None) -> dict:
    """Story-ending accuracy of ``lm`` on the cloze items whose story and ending fit ``context`` tokens."""
    tok = lm.tokenizer
    items = [it for it in cons.cloze_items(docs, 4 * cfg.cloze_items, seed=cfg.seed)
             if max(len(tok(it[0] + " " + e, add_special_tokens=False)["input_ids"]) for e in it[1:]) <= context]
    items = items[: cfg.cloze_items]
    if not items:
        return {"skipped": f"no story fits the smallest context ({context} tokens) with its ending",
                "context": context}
    kw = {} if lm.exact else {"n_samples": cfg.nll_samples}

    def score(ctx: str, endings: list[str]) -> list[float]:
        prefix = len(tok(ctx, add_special_tokens=False)["input_ids"])
        if lm.exact:
            rs = [lm.nll([ctx + " " + e for e in endings], prefix_len=prefix)]
        else:  # a Monte Carlo bound: the endings of a story share their draws (common random numbers), and
            # the draws change from story to story; one draw pattern per ending length would be a length bias
            seed = cfg.seed + zlib.crc32(ctx.encode("utf-8"))
            rs = [lm.nll([ctx + " " + e], prefix_len=prefix, seed=seed, **kw) for e in endings]
        return [a / b for r in rs for a, b in zip(r.per_text, r.per_text_tokens)]

    hits = cached_batches(cache, len(items), 8, lambda a, b: cons.cloze_accuracy(items[a:b], score))
    return {"accuracy": sum(hits) / len(hits), "n": len(hits),
            "ci": _ci(hits, lambda x: sum(x) / len(x), cfg), "context": context}


def _nfe_sweep(name: str, lm, options: dict, prompts, judge_lm, synthetic, cfg) -> list[dict]:
    """One model's quality at each step count of ``cfg.nfe_sweep`` (one row for a model without steps)."""
    rows = []
    knob = "num_inference_steps" if get_kind(lm.kind).steps_sweep else None
    for v in cfg.nfe_sweep if knob else [None]:
        o = dict(options, **({knob: v} if knob else {}))
        gen, nfe = generate_samples(lm, prompts, cfg, o, seed=cfg.seed)
        s = System(name, prompts, [c for _, c in gen], [t for t, _ in gen])
        row = {"model": name, "steps": v, "nfe": nfe,
               "entropy": M.unigram_entropy(s.continuations), "rep4": M.rep_n(s.continuations, 4)}
        if judge_lm is not None:
            row["gen_ppl"] = perplexity(judge_scores(judge_lm, s))
        if synthetic:
            try:
                p = cons.synthetic_probe(prompts, s.texts)
                row["well_formed"], row["consistent"] = p.well_formed, p.consistent
            except LatentLMError:
                pass
        rows.append(row)
    return rows
