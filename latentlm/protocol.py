"""The TinyStories protocol: every model of the comparison trained and compared in one resumable run.

    tinystories_protocol("runs/ts", data_dir="../shared/data/tinystories")

Stages, in order: the tokenizer, the AR baseline, the judge of ``compare``,
the autoencoder, the denoiser (parallel sampling), MDLM, a block-causal
denoiser (block-AR sampling), then ``compare`` on ``valid.jsonl`` and on
``test.jsonl``. Every training stage uses the preset's full budget and saves
a checkpoint every ``save_every`` steps: a killed run, rerun with the same
command, skips every finished stage, resumes the one it was in from its last
checkpoint, and ``compare`` resumes from its last finished section or batch.
``protocol.json`` keeps each stage's wall-clock (summed over the run's
segments, at most ``CLOCK_EVERY`` seconds lost to a kill); ``results.json``
holds the final table that README and the docs quote (:func:`render_results`).
A model given in ``models`` (stage name -> trained folder) is used as it is and
its stage is skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from latentlm.cost import cost_record, run_cost
from latentlm.data.readers import read_documents
from latentlm.data.tokenizer import DEFAULT_VOCAB_SIZE, sentence_end_ids, train_tokenizer
from latentlm.device import device_name, machine_name, resolve_device
from latentlm.errors import CheckpointError, DataError, InputError, LatentLMError
from latentlm.eval.compare import CompareConfig, compare, samples_path
from latentlm.eval.latents import generability_report, report_table
from latentlm.files import link_copies, move_tree, write_text_atomic
from latentlm.loading import load_pipeline
from latentlm.recipes import run_training

SPLITS = ("train", "valid", "test")
CLOCK_EVERY = 10.0  # seconds between writes of a running stage's clock


@dataclass(frozen=True)
class TrainStage:
    """One model of the protocol: ``kind`` trained with the preset, plus ``overrides``."""

    name: str
    kind: str
    overrides: tuple[str, ...] = ()
    autoencoder: str | None = None  # the stage whose autoencoder a denoiser uses
    compared: str | None = None  # its name in the compare tables (None: not compared, e.g. the judge)
    pipeline: str | None = None  # the stage whose pipeline a decoder run adapts


STAGES = (
    TrainStage("ar", "ar", compared="ar"),
    TrainStage("judge", "judge"),
    TrainStage("autoencoder", "autoencoder"),
    TrainStage("denoiser", "denoiser", autoencoder="autoencoder", compared="latent"),
    TrainStage("mdlm", "mdlm", compared="mdlm"),
    # block-causal steps are slower (a median 2.79-3.03 s over two runs against 2.33 on a 2-core AVX2 CPU):
    # 1,200 of them keep the latent model within 2x the AR's time with its autoencoder (1.88-1.95x; the
    # preset's 1,300 would take 1.95-2.02x)
    TrainStage("denoiser_block", "denoiser", ("model.block_size=4", "model.sampling_mode=block-ar", "train.steps=1200"),
               autoencoder="autoencoder", compared="latent-block"),
)
DIFFUSION_KINDS = ("mdlm", "duo", "sedd", "denoiser", "decoder")
COMPARED_KINDS = ("ar", "mdlm", "duo", "sedd", "denoiser", "decoder")  # the kinds whose model writes text
VARIANT_KINDS = ("ar", "mdlm", "duo", "sedd", "autoencoder", "denoiser", "decoder")


def parse_variant(spec: str, stages: tuple[TrainStage, ...]) -> TrainStage:
    """A stage from ``NAME=BASE[@INPUT][:SECTION.KEY=VALUE,...]``: a copy of stage (or kind) ``BASE`` with
    the extra overrides, trained into ``NAME`` and compared as row ``NAME``. ``@INPUT``: the stage whose
    autoencoder a denoiser trains on, or whose pipeline a decoder run adapts. Examples:
    ``broad=denoiser:loss.time_mean=0,loss.time_std=1``; ``ae-ar=autoencoder:model.group_decoder=local-ar``
    then ``latent-ar=denoiser@ae-ar``; ``adapted=decoder@broad``."""
    known = {s.name: s for s in stages}
    name, eq, rest = spec.partition("=")
    head, _, tail = rest.partition(":")
    base, _, source = head.partition("@")
    name, base, source = name.strip(), base.strip(), source.strip()
    form = "NAME=BASE[@INPUT][:SECTION.KEY=VALUE,...]"
    if not eq or not name or not base:
        raise InputError(f"a variant is {form}, got {spec!r}")
    if name in known or name in ("tokenizer", *SPLITS) or not all(c.isalnum() or c in "-_" for c in name):
        raise InputError(f"variant name {name!r} is taken or not a plain name (letters, digits, - and _); "
                         f"stages so far: {', '.join(known)}")
    overrides = tuple(o.strip() for o in tail.split(",") if o.strip())
    for o in overrides:
        if "=" not in o or "." not in o.partition("=")[0]:
            raise InputError(f"variant {name!r}: override {o!r} is not SECTION.KEY=VALUE")
    if base in known:
        stage = known[base]
        kind, overrides = stage.kind, stage.overrides + overrides
        autoencoder, pipeline = stage.autoencoder, stage.pipeline
    elif base in VARIANT_KINDS:
        kind, autoencoder, pipeline = base, None, None
    else:
        raise InputError(f"variant {name!r}: no stage or kind {base!r}; stages: {', '.join(known)}; "
                         f"kinds: {', '.join(VARIANT_KINDS)}")
    if source:
        if source not in known:
            raise InputError(f"variant {name!r}: no stage {source!r} before it to take @{source} from")
        if kind == "denoiser":
            autoencoder = source
        elif kind == "decoder":
            pipeline = source
        else:
            raise InputError(f"variant {name!r}: only a denoiser (@autoencoder) or a decoder (@pipeline) takes @INPUT")
    if kind == "denoiser" and autoencoder is None:
        raise InputError(f"variant {name!r}: a denoiser needs @AUTOENCODER_STAGE, e.g. {name}=denoiser@autoencoder")
    if kind == "decoder" and pipeline is None:
        raise InputError(f"variant {name!r}: decoder adaptation needs @PIPELINE_STAGE, e.g. {name}=decoder@denoiser")
    return TrainStage(name, kind, overrides, autoencoder=autoencoder, pipeline=pipeline,
                      compared=name if kind in COMPARED_KINDS else None)


def protocol_compare_config(**changes) -> CompareConfig:
    """compare's settings for the protocol: every opening of the split, two samples per opening
    (at least 512 continuations per model on TinyStories valid and test), 128 new tokens."""
    base = dict(prompts=100_000, seeds=2, max_new_tokens=128, nll_texts=100_000, nll_samples=8,
                speed_lengths=(128, 1024))
    return CompareConfig(**{**base, **changes})


@dataclass
class ProtocolConfig:
    """What the protocol trains and compares (the defaults are the published run)."""

    preset: str = "cpu-small"
    save_every: int = 100  # steps between checkpoints of every training stage
    overrides: dict[str, list[str]] = field(default_factory=dict)  # stage -> extra SECTION.KEY=VALUE
    compare: CompareConfig = field(default_factory=protocol_compare_config)
    splits: tuple[str, ...] = ("valid", "test")  # compared, in order
    stages: tuple[TrainStage, ...] = STAGES
    variants: tuple[str, ...] = ()  # extra rows, :func:`parse_variant` specs; kept in protocol.json
    # the generability report (latentlm eval latents) of every latent model on valid.jsonl: texts, openings
    latents_texts: int = 256
    latents_prompts: int = 64
    # steps of the AR timed on a machine that trains a stage but did not train the AR (its pace there)
    pace_steps: int = 40

    def validate(self) -> None:
        names = {s.name for s in self.stages} | {v.partition("=")[0].strip() for v in self.variants}
        for name in self.overrides:
            if name not in names:
                raise InputError(f"overrides for an unknown stage {name!r}; stages: {', '.join(sorted(names))}")
        for split in self.splits:
            if split not in ("valid", "test"):
                raise InputError(f"split {split!r}: compare runs on 'valid' or 'test'")
        if self.save_every < 1:
            raise InputError(f"save_every must be positive, got {self.save_every}")
        if self.pace_steps < 2:
            raise InputError(f"pace_steps must be at least 2 (a timed interval past the first), got {self.pace_steps}")
        self.compare.validate()


class StageClock:
    """Wall-clock of each stage, summed over every run that worked on it, in ``protocol.json``.

    While a stage runs a thread writes its time every ``CLOCK_EVERY`` seconds, so a kill loses at
    most that much of it. Each write keeps what another process wrote of the stages this one has not
    worked on, so two runs of the protocol on one folder (``--splits valid`` beside ``--splits test``)
    keep each other's times."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict = self._read()
        self._mine: set[str] = set()  # stages this process ran or marked
        self._keys: set[str] = set()  # top-level entries this process set (``variants``)

    def _read(self) -> dict:
        if self.path.is_file():
            try:
                return json.loads(self.path.read_text())
            except json.JSONDecodeError:
                pass  # a file cut by a crash: the times start over, the models are kept
        return {"stages": {}}

    def seconds(self, name: str) -> float:
        return float(self.data["stages"].get(name, {}).get("seconds", 0.0))

    def is_done(self, name: str) -> bool:
        return bool(self.data["stages"].get(name, {}).get("done"))

    def run(self, name: str, fn: Callable[[], object], **info) -> None:
        self._mine.add(name)
        entry = self.data["stages"].setdefault(name, {"seconds": 0.0, "runs": 0})
        machines = sorted({*entry.get("machines", []), machine_name()})  # a stage resumed elsewhere has two
        entry.update(info, runs=entry["runs"] + 1, machines=machines)
        base, t0, stop = entry["seconds"], time.perf_counter(), threading.Event()

        def tick() -> None:
            while not stop.wait(CLOCK_EVERY):
                entry["seconds"] = base + time.perf_counter() - t0
                self._write()

        thread = threading.Thread(target=tick, daemon=True)
        thread.start()
        try:
            fn()
            entry["done"] = True
        finally:
            stop.set()
            thread.join()
            entry["seconds"] = base + time.perf_counter() - t0
            self._write()

    def mark(self, name: str, **info) -> None:
        self._mine.add(name)
        self.data["stages"].setdefault(name, {}).update(info)
        self._write()

    def put(self, key: str, value) -> None:
        """Set a top-level entry of ``protocol.json`` (not a stage) and write it."""
        self._keys.add(key)
        self.data[key] = value
        self._write()

    def _write(self) -> None:
        with FileLock(f"{self.path}.lock"):
            disk = self._read()
            stages = {**disk.get("stages", {}), **{n: self.data["stages"][n] for n in self._mine}}
            self.data = {**disk, **{k: self.data[k] for k in self._keys}, "stages": stages}
            write_text_atomic(self.path, json.dumps(self.data, indent=1))


def with_variants(cfg: ProtocolConfig, clock: StageClock) -> ProtocolConfig:
    """``cfg`` with the variants of this run folder (kept in ``protocol.json``) and ``cfg.variants`` as
    stages; a name given again with another definition is an error (its model is already trained)."""
    saved = list(clock.data.get("variants", []))
    names = {v.partition("=")[0].strip(): v for v in saved}
    for v in cfg.variants:
        name = v.partition("=")[0].strip()
        if name in names and names[name] != v:
            raise InputError(f"variant {name!r} is defined in this run as {names[name]!r}; give the new one "
                             "another name")
        if name not in names:
            saved.append(v)
            names[name] = v
    stages = tuple(cfg.stages)
    for v in saved:
        stages += (parse_variant(v, stages),)
    if saved != clock.data.get("variants", []):
        clock.put("variants", saved)
    return dataclasses.replace(cfg, stages=stages, variants=tuple(saved))


@contextlib.contextmanager
def claimed(out: Path, name: str, say: Callable[[str], None]) -> Iterator[None]:
    """Hold stage ``name`` of the run folder ``out`` for this process: a second protocol process on the
    same folder (``--splits test`` beside ``--splits valid``) waits here instead of training the same
    model into the same folder, then finds it done."""
    lock = FileLock(out / f".{name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        say(f"{name}: another process on this folder is working on it; waiting for it")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _trained(folder: Path) -> bool:
    return (folder / "config.json").is_file() or (folder / "model_index.json").is_file()


def split_files(data_dir: str | Path) -> dict[str, Path]:
    """train/valid/test.jsonl of ``data_dir``; DataError naming what is missing."""
    data_dir = Path(data_dir)
    files = {s: data_dir / f"{s}.jsonl" for s in SPLITS}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise DataError(f"the protocol needs train.jsonl, valid.jsonl and test.jsonl in {data_dir}; "
                        f"missing: {', '.join(missing)}")
    return files


def tinystories_protocol(out: str | Path, data_dir: str | Path, *, cfg: ProtocolConfig | None = None,
                         models: dict[str, str | Path] | None = None, device: str = "auto",
                         progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the protocol into ``out``; returns the results written to ``out/results.json``.
    With no ``cfg.splits`` it trains every stage (and writes the generability reports) and returns their
    record without comparing or writing ``results.json``."""
    cfg = cfg or ProtocolConfig()
    cfg.validate()
    models = {k: Path(v) for k, v in (models or {}).items()}
    files = split_files(data_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clock = StageClock(out / "protocol.json")
    cfg = with_variants(cfg, clock)
    cfg.validate()  # again: overrides may name the variants this run folder keeps
    for name, folder in models.items():
        if name not in {"tokenizer", *(s.name for s in cfg.stages)}:
            raise InputError(f"--model {name}=...: no stage {name!r}; stages: tokenizer, "
                             f"{', '.join(s.name for s in cfg.stages)}")
        if name == "tokenizer" and not (folder / "tokenizer.json").is_file():
            raise InputError(f"--model tokenizer={folder}: no tokenizer.json in that folder")
        if name != "tokenizer" and not _trained(folder):
            raise InputError(f"--model {name}={folder}: not a trained model folder (no config.json "
                             "or model_index.json)")
    n_steps = 1 + len(cfg.stages) + len(cfg.splits)
    step = 0

    def say(what: str) -> None:
        log(f"[{step}/{n_steps}] {what}")

    # --- tokenizer ------------------------------------------------------------------
    step += 1
    tok_dir = models.get("tokenizer", out / "tokenizer")
    with claimed(out, "tokenizer", say):
        if not (tok_dir / "tokenizer.json").is_file():
            def make_tokenizer() -> None:
                tmp = out / "tokenizer.tmp"
                train_tokenizer(read_documents([files["train"]]), DEFAULT_VOCAB_SIZE).save_pretrained(tmp)
                move_tree(tmp, tok_dir)
            clock.run("tokenizer", make_tokenizer)
    say(f"tokenizer {tok_dir} ({clock.seconds('tokenizer'):.0f} s)")

    # --- models ---------------------------------------------------------------------
    folders: dict[str, Path] = {}
    for stage in cfg.stages:
        step += 1
        folder = folders[stage.name] = models.get(stage.name, out / stage.name)
        if stage.name in models:
            clock.mark(stage.name, given=str(folder))
            say(f"{stage.name}: given, {folder}")
            continue
        with claimed(out, stage.name, say):
            if not _trained(folder):
                if stage.name != "ar" and "ar" in folders:
                    _time_ar_here(folders["ar"], tok_dir, files, cfg, clock, out, say)
                _train_stage(stage, folder, folders, tok_dir, files, cfg, clock, say, progress)
            # a pipeline carries copies of the models it was built on: one copy in the run folder
            sources = [] if "tokenizer" in models else [tok_dir]
            saved = link_copies(folder, sources + [f for n, f in folders.items() if n != stage.name and n not in models])
        say(f"{stage.name} trained, {folder} ({clock.seconds(stage.name):.0f} s"
            + (f"; {saved / 2**20:.1f} MiB of copies linked to the runs they came from)" if saved else ")"))

    # --- where each latent model loses the text (before compare: minutes, not hours) -----------
    latents = {}
    for stage in cfg.stages:
        if stage.kind not in ("denoiser", "decoder") or not stage.compared:
            continue
        path = out / f"latents_{stage.name}.json"
        with claimed(out, f"latents_{stage.name}", say):
            if not path.is_file():
                clock.run(f"latents_{stage.name}", lambda stage=stage, path=path: _latents_report(
                    folders[stage.name], files["valid"], path, cfg))
        latents[stage.compared] = json.loads(path.read_text())
        say(f"{stage.name}: generability report {path}")

    # --- compare --------------------------------------------------------------------
    compared = {s.compared: folders[s.name] for s in cfg.stages if s.compared}
    judge = folders.get("judge")
    reports = {}
    for split in cfg.splits:
        step += 1
        say(f"compare on {split}.jsonl")
        report = out / f"compare_{split}"
        with claimed(out, f"compare_{split}", say):
            clock.run(f"compare_{split}", lambda split=split, report=report: compare(
                compared, files[split], report, train=files["train"], judge=judge, cfg=cfg.compare,
                progress=progress, device=device))
        reports[split] = json.loads((report / "results.json").read_text())
    results = summarise(clock.data, reports, cfg, device_name(resolve_device(device)), folders)
    results["latents"] = latents
    if cfg.splits:  # a run without splits trains only: the last compared run's results.json stays
        results["splits"] = with_earlier_splits(out / "results.json", results["splits"])
        write_text_atomic(out / "results.json", json.dumps(results, indent=1))
        write_text_atomic(out / "results.md", "\n".join([render_results(results, cfg.splits[-1]),
                                                         render_training(results),
                                                         render_sampling(results, cfg.splits[-1]),
                                                         render_per_t(results)]))
    return results


def measure_ar_pace(ar_folder: Path, tok_dir: Path, train: Path, work: Path, steps: int) -> float:
    """The median seconds per training step of the AR run in ``ar_folder`` on this machine: its saved
    configuration trained for ``steps`` steps in ``work`` (removed after). Times on two machines are
    compared through it: a stage's time over the AR's pace on the machine that trained the stage."""
    config_file = ar_folder / "run_config.json"
    try:
        saved = json.loads(config_file.read_text("utf-8"))
        saved["train"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{config_file} cannot be read as the AR's run configuration ({e!r}): "
                              f"retrain the AR stage (delete {ar_folder}) or restore the file") from None
    log_every = max(1, min(int(saved["train"].get("log_every", 10)), steps // 2))
    overrides = [*saved.get("overrides", []), f"train.steps={steps}", f"train.log_every={log_every}",
                 f"train.warmup_steps={min(steps, int(saved['train'].get('warmup_steps', 1)))}",
                 f"train.eval_every={steps}", f"train.save_every={steps}"]
    if work.exists():
        shutil.rmtree(work)
    try:
        run_training("ar", [train], work, preset=saved.get("preset"), config_file=saved.get("config_file"),
                     overrides=overrides, tokenizer=tok_dir, progress=False)
        steady = steady_seconds(work / "metrics.jsonl")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if steady is None:
        raise LatentLMError(f"timing the AR on this machine logged no interval in {steps} steps")
    return steady[0] / steady[1]


def _time_ar_here(ar_folder: Path, tok_dir: Path, files: dict[str, Path], cfg: ProtocolConfig,
                  clock: StageClock, out: Path, say: Callable[[str], None]) -> None:
    """Before a stage trains on a machine that did not train the AR: time the AR's pace here once."""
    here = machine_name()
    ar_machines = clock.data["stages"].get("ar", {}).get("machines") or []
    paces = dict(clock.data.get("ar_pace", {}))
    if not ar_machines or here in ar_machines or here in paces or not (ar_folder / "run_config.json").is_file():
        return
    say(f"this machine ({here}) did not train the AR: timing {cfg.pace_steps} of its steps here")
    paces[here] = measure_ar_pace(ar_folder, tok_dir, files["train"], out / ".ar_pace", cfg.pace_steps)
    clock.put("ar_pace", paces)
    say(f"the AR's pace here: {paces[here]:.2f} s/step")


def _train_stage(stage: TrainStage, folder: Path, folders: dict[str, Path], tok_dir: Path, files: dict[str, Path],
                 cfg: ProtocolConfig, clock: StageClock, say: Callable[[str], None], progress: bool) -> None:
    """Train (or resume) one stage into ``folder``; KeyboardInterrupt when a signal stopped it."""
    overrides = [f"train.save_every={cfg.save_every}", *stage.overrides, *cfg.overrides.get(stage.name, [])]
    extra = ({"autoencoder": folders[stage.autoencoder]} if stage.autoencoder
             else {"pipeline": folders[stage.pipeline]} if stage.pipeline
             else {"tokenizer": tok_dir})
    say(f"training {stage.name} ({stage.kind}, {cfg.preset}{', ' if overrides else ''}{' '.join(overrides)})")

    def fit() -> None:
        result = run_training(stage.kind, [files["train"]], folder, preset=cfg.preset, overrides=overrides,
                              valid=[files["valid"]], progress=progress, **extra)
        if result.interrupted:  # a signal: the checkpoint is saved, the stage is not done
            raise KeyboardInterrupt(f"{stage.name} interrupted at step {result.step}")

    clock.run(stage.name, fit, kind=stage.kind, overrides=overrides)



def protocol_status(out: str | Path, cfg: ProtocolConfig | None = None) -> list[dict]:
    """Where the run in ``out`` stands, one record per stage (its remembered variants included): state
    (done, running or stopped at a step, not started, given), wall-clock so far, the median seconds per
    training step and the time left at that pace. Reads files only; trains nothing."""
    out = Path(out)
    path = out / "protocol.json"
    if not path.is_file():
        raise InputError(f"{path} does not exist: {out} holds no protocol run (start one without --status)")
    data = json.loads(path.read_text())
    cfg = cfg or ProtocolConfig()
    stages = tuple(cfg.stages)
    for v in [*data.get("variants", []), *(v for v in cfg.variants if v not in data.get("variants", []))]:
        stages += (parse_variant(v, stages),)
    clock = data.get("stages", {})
    names = ["tokenizer", *(s.name for s in stages),
             *(f"latents_{s.name}" for s in stages if s.kind in ("denoiser", "decoder") and s.compared),
             *(f"compare_{split}" for split in cfg.splits)]
    rows = []
    for name in names:
        info = clock.get(name, {})
        row = {"stage": name, "seconds": info.get("seconds"), "state": "not started"}
        if info.get("given"):
            row["state"] = "given"
        elif info.get("done"):
            row["state"] = "done"
        elif info:
            row["state"] = "started"
        if name.startswith("compare_") and row["state"] == "done":
            row["state"] = _compare_state(out / name, [s.compared for s in stages if s.compared])
        metrics = out / name / "metrics.jsonl"
        steady = steady_seconds(metrics) if row["state"] != "given" else None
        config = out / name / "run_config.json"
        if steady and config.is_file():
            steps = json.loads(config.read_text())["train"]["steps"]
            per_step = steady[0] / steady[1]
            row.update(step=steady[1], steps=steps, seconds_per_step=per_step)
            if row["state"] != "done":
                row["state"] = f"step {steady[1]}/{steps}"
                row["seconds_left"] = per_step * max(0, steps - steady[1])
        rows.append(row)
    return rows


def _compare_state(report: Path, rows: list[str]) -> str:
    """"done" when the compare run in ``report`` holds every row of ``rows`` and its aggregate tables
    (a row added after it finished leaves them out), else which rows it has still to compare."""
    try:
        data = json.loads((report / "results.json").read_text())
        systems, sections = data["config"]["systems"], data["sections"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return "not started"
    missing = [r for r in rows if r not in systems]
    if missing:
        return f"rows to compare: {', '.join(missing)}"
    return "done" if "meta" in sections else "started"


def render_status(rows: list[dict]) -> str:
    """:func:`protocol_status` as a markdown table."""
    def dur(s: float | None) -> str:
        return "-" if s is None else f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min"

    lines = ["| stage | state | wall-clock so far | s/step | left at that pace |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['state']} | {dur(r['seconds'])} | "
                     f"{_num(r.get('seconds_per_step'), '{:.2f}')} | {dur(r.get('seconds_left'))} |")
    return "\n".join(lines) + "\n"

def _latents_report(pipeline: Path, valid: Path, path: Path, cfg: ProtocolConfig) -> None:
    """``latentlm eval latents`` of one latent pipeline, written to ``path`` (JSON) and beside it (markdown)."""
    pipe = load_pipeline(pipeline)
    report = generability_report(pipe.autoencoder, pipe.tokenizer, read_documents([valid]),
                                 torch.tensor(sentence_end_ids(pipe.tokenizer)), pipe=pipe,
                                 max_texts=cfg.latents_texts, prompts=cfg.latents_prompts)
    write_text_atomic(path.with_suffix(".md"), report_table(report) + "\n")
    write_text_atomic(path, json.dumps(report, indent=1))


# ----------------------------------------------------------------------------- results


def steady_seconds(metrics_file: Path) -> tuple[float, int] | None:
    """(median seconds per training step x steps, steps) from a run's ``metrics.jsonl``: the training
    time of the run on a machine it has to itself, robust to intervals slowed by other work (evaluation,
    checkpoints and export excluded). None when the file has no timed interval."""
    if not metrics_file.is_file():
        return None
    per_step, prev, last = [], 0, 0
    for line in metrics_file.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        step = rec.get("step", 0)
        # the steps an interval timed: logged since it was added; before, the steps since the last record,
        # which overcounts the first interval after a resume (its time starts at the checkpoint)
        steps = rec.get("interval_steps", step - prev)
        if step > prev and steps > 0 and rec.get("seconds"):  # a run resumed before its last record: skipped
            per_step.append(rec["seconds"] / steps)
        prev, last = step, max(last, step)
    if not per_step:
        return None
    per_step.sort()
    return per_step[len(per_step) // 2] * last, last


def summarise(clock: dict, reports: dict[str, dict], cfg: ProtocolConfig, device: str,
              folders: dict[str, Path] | None = None) -> dict:
    """One record of the run: per training stage its wall-clock (summed over the run's segments) and its
    steady training time (:func:`steady_seconds`), each diffusion model's ratio to the AR's (on the
    steady time when both have one), and per split the headline numbers of every compared model."""
    stages, folders = clock["stages"], folders or {}
    training = {}
    for s in cfg.stages:
        info = stages.get(s.name, {})
        steady = steady_seconds(folders[s.name] / "metrics.jsonl") if s.name in folders else None
        training[s.name] = {"kind": s.kind, "compared": s.compared, "seconds": info.get("seconds"),
                            "given": info.get("given"), "machines": info.get("machines"),
                            "steady_seconds": steady[0] if steady else None, "steps": steady[1] if steady else None,
                            **_cost_of(folders.get(s.name))}

    def cost(name: str) -> float | None:
        t = training.get(name, {})
        return t.get("steady_seconds") or t.get("seconds")

    ar = training.get("ar", {})
    paces = clock.get("ar_pace", {})

    def ar_units(name: str) -> float | None:
        """A stage's time over the AR's on the machine that trained it: the AR's own run there, or on
        another machine its pace measured there (:func:`measure_ar_pace`) times its steps. None for a
        stage trained on two machines, or on one where the AR was never timed."""
        mine, ars = training.get(name, {}).get("machines") or [], ar.get("machines") or []
        if not cost(name) or not cost("ar"):
            return None
        if not mine and not ars:  # runs before machines were recorded: one machine assumed
            return cost(name) / cost("ar")
        if len(mine) != 1:
            return None
        if ars == mine:
            return cost(name) / cost("ar")
        pace = paces.get(mine[0])
        return cost(name) / (pace * ar["steps"]) if pace and ar.get("steps") else None

    def flops(name: str) -> float | None:
        return training.get(name, {}).get("total_flops")

    by_name = {s.name: s for s in cfg.stages}

    def chain(s: TrainStage) -> list[str]:  # a latent model's runs: adapted decoder, denoiser, autoencoder
        return [s.name, *(chain(by_name[s.pipeline]) if s.pipeline in by_name else
                          [s.autoencoder] if s.autoencoder else [])]

    for s in cfg.stages:
        if s.kind in DIFFUSION_KINDS and ar_units(s.name) is not None:
            training[s.name]["x_ar"] = ar_units(s.name)
            units = [ar_units(n) for n in chain(s)]
            if len(units) > 1 and None not in units:
                training[s.name]["x_ar_total"] = sum(units)
        if s.kind in DIFFUSION_KINDS and flops("ar") and all(flops(n) for n in chain(s)):
            training[s.name]["flops_x_ar"] = sum(flops(n) for n in chain(s)) / flops("ar")  # with what it is built on
    splits = {split: headline(rep) for split, rep in reports.items()}
    return {"preset": cfg.preset, "device": device, "training": training, "ar_pace": paces, "splits": splits,
            "compare": asdict(cfg.compare), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}


def with_earlier_splits(path: Path, splits: dict) -> dict:
    """``splits`` (this run's headline per split) with the headlines of the splits that the earlier
    ``results.json`` at ``path`` holds and this run did not compare: a ``--splits valid`` run keeps the
    ``test`` table. Ordered as :attr:`ProtocolConfig.splits` (the last is the rendered headline)."""
    try:
        earlier = json.loads(path.read_text()).get("splits", {}) if path.exists() else {}
    except (OSError, ValueError):
        earlier = {}  # an unreadable earlier file is replaced, as before
    merged = {**earlier, **splits}
    order = ProtocolConfig.splits
    return {s: merged[s] for s in sorted(merged, key=lambda s: order.index(s) if s in order else len(order))}


def _cost_of(folder: Path | None) -> dict:
    """Parameters and training FLOPs of the run in ``folder`` (:func:`latentlm.cost.run_cost`)."""
    if folder is None:
        return {}
    try:
        cost = run_cost(folder)
    except (LatentLMError, OSError) as e:
        return {"cost_error": str(e)}
    return cost_record(cost) if cost else {}


HEADLINE = ("matched_ppl", "matched_mauve", "gen_ppl", "mauve", "mauve_ci", "entropy", "rep4", "known_names",
            "nats_per_token", "bits_per_char")


def headline(report: dict) -> dict[str, dict]:
    """Per system: the numbers of the results table, read from one compare results dictionary."""
    s = report["sections"]
    rows: dict[str, dict] = {}
    for name, q in s.get("quality", {}).get("rows", {}).items():
        r = rows.setdefault(name, {})
        for k in ("gen_ppl", "mauve", "mauve_ci", "entropy", "rep4", "n"):
            r[k] = q.get(k)
        r["known_names"] = s.get("consistency", {}).get("entities", {}).get(name, {}).get("known_names")
        lk = s.get(f"likelihood/{name}")
        if lk:
            r.update(nats_per_token=lk["nats_per_token"], bits_per_char=lk["bits_per_char"], exact=lk["exact"])
    for name, m in s.get("diversity", {}).get("matched", {}).items():
        rows.setdefault(name, {}).update(matched_ppl=m.get("gen_ppl"), matched_mauve=m.get("mauve"),
                                         matched_knob=m.get("knob"))
    for sp in s.get("speed", []):  # batch-1 latency per length; sampling FLOPs per new token
        if sp.get("latency_s") is None or sp["model"] not in rows:
            continue
        r = rows[sp["model"]]
        r.setdefault("latency_s", {})[str(sp["new_tokens"])] = sp["latency_s"]
        if sp.get("tokens_made") is not None:
            r.setdefault("tokens_made", {})[str(sp["new_tokens"])] = sp["tokens_made"]
        r.setdefault("sample_flops_per_token", sp["gflops_per_sample"] * 1e9 / sp["new_tokens"])
    return rows


def _num(v, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def _built_on(t: dict) -> str:
    """What a stage's total time ratio adds to its own run: a decoder run's pipeline, a denoiser's autoencoder."""
    return "its pipeline" if t["kind"] == "decoder" else "its autoencoder"


def render_results(results: dict, split: str = "test") -> str:
    """The TinyStories results table (markdown) of a protocol run, for README and docs."""
    rows = results["splits"].get(split)
    if rows is None:
        raise InputError(f"the results hold no {split!r} split (have: {', '.join(results['splits'])})")
    head = ["system", "gen. PPL at real entropy", "MAUVE [95% CI]", "word entropy", "gen. PPL (T=1)", "rep-4",
            "names from opening", "nats/token", "training"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    training = results["training"]
    by_compared = {t.get("compared"): name for name, t in training.items() if t.get("compared")}
    for name, r in rows.items():
        if name.startswith("sanity") and name not in ("sanity: bigram",):
            continue
        ci = r.get("mauve_ci")
        mauve = _num(r.get("mauve"), "{:.3f}") + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        matched = r.get("matched_ppl")
        matched_s = "not reached" if matched is None and "matched_knob" in r else _num(matched, "{:.1f}")
        nll = "-" if r.get("nats_per_token") is None else ("" if r.get("exact") else "<= ") + f"{r['nats_per_token']:.3f}"
        t = training.get(by_compared.get(name, ""), {})
        sec = t.get("steady_seconds") or t.get("seconds")
        train_s = "-" if not sec else f"{sec / 60:.0f} min" + (f" ({t['x_ar']:.2f}x AR" if t.get("x_ar") else "")
        if t.get("x_ar") and t.get("x_ar_total"):  # with the runs it is built on
            train_s += f"; {t['x_ar_total']:.2f}x with {_built_on(t)}"
        train_s += ")" if t.get("x_ar") else ""
        lines.append("| " + " | ".join([name, matched_s, mauve, _num(r.get("entropy"), "{:.2f}"),
                                         _num(r.get("gen_ppl"), "{:.1f}"), _num(r.get("rep4"), "{:.3f}"),
                                         _num(r.get("known_names"), "{:.3f}"), nll, train_s]) + " |")
    return "\n".join(lines) + "\n"


def render_training(results: dict) -> str:
    """Training time and compute of every stage, with each diffusion model's ratios to the AR's."""
    lines = ["| stage | kind | trained params | training MFLOPs/token | training PFLOPs | x the AR's FLOPs | steps "
             "| steady training time | wall-clock, all runs | x the AR's time |", "|" + "---|" * 10]
    for name, t in results["training"].items():
        sec = "given" if t.get("given") else _num(t.get("seconds"), "{:.0f} s")
        ratio = _num(t.get("x_ar"), "{:.2f}")
        if t.get("x_ar_total"):
            ratio += f" ({t['x_ar_total']:.2f} with {_built_on(t)})"
        params = _num(t.get("trained_params"), "{:,}")
        if t.get("frozen_params"):
            params += f" (+{t['frozen_params']:,} frozen)"
        lines.append(f"| {name} | {t['kind']} | {params} | {_num(t.get('flops_per_token'), '{:.1e}')} | "
                     f"{_num(t.get('total_flops') and t['total_flops'] / 1e15, '{:.3f}')} | "
                     f"{_num(t.get('flops_x_ar'), '{:.2f}')} | {_num(t.get('steps'), '{}')} | "
                     f"{_num(t.get('steady_seconds'), '{:.0f} s')} | {sec} | {ratio} |")
    machines: dict[str, list[str]] = {}
    for name, t in results["training"].items():
        for m in t.get("machines") or ():
            machines.setdefault(m, []).append(name)
    if len(machines) > 1:
        paces = results.get("ar_pace", {})
        lines += ["", "The stages trained on more than one machine. A time ratio divides by the AR's time on the "
                  "machine that trained the stage: its own run, or where the AR did not train, its pace timed "
                  "there times its steps; a stage trained on two machines has none (FLOPs always):",
                  *(f"- {m}: {', '.join(names)}" + (f" (the AR's pace: {paces[m]:.2f} s/step)" if m in paces else "")
                    for m, names in machines.items())]
    return "\n".join(lines) + "\n"


def render_sampling(results: dict, split: str = "test") -> str:
    """Sampling cost of every compared model: FLOPs per new token and batch-1 latency ("(N made)" where
    the sample ended before the asked length)."""
    rows = results["splits"].get(split, {})
    lengths = sorted({int(n) for r in rows.values() for n in r.get("latency_s", {})})
    head = ["system", "sampling MFLOPs/token", *(f"latency, {n} tokens (s)" for n in lengths)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        if "sample_flops_per_token" not in r:
            continue
        lat, made = r.get("latency_s", {}), r.get("tokens_made", {})
        cells = [_num(lat.get(str(n)), "{:.2f}") + (f" ({made[str(n)]} made)" if made.get(str(n), n) < n else "")
                 for n in lengths]
        lines.append("| " + " | ".join([name, f"{r['sample_flops_per_token'] / 1e6:.1f}", *cells]) + " |")
    return "\n".join(lines) + "\n"


def render_per_t(results: dict) -> str:
    """Per latent model, token accuracy / word entropy of its decoded clean estimate (self-conditioned
    when it self-conditions) at each t of the per-t map on valid.jsonl, next to the training density."""
    latents = {n: r for n, r in results.get("latents", {}).items() if r.get("per_t")}
    if not latents:
        return ""
    names = list(latents)
    grid = [row["t"] for row in latents[names[0]]["per_t"]]
    lines = ["| t | " + " | ".join(f"{n}: x0_hat acc. / entropy (training mass)" for n in names) + " |",
             "|" + "---|" * (len(names) + 1)]
    for i, t in enumerate(grid):
        cells = []
        for n in names:
            r = latents[n]["per_t"][i]
            acc = r["x0_sc_accuracy"] if r.get("x0_sc_accuracy") is not None else r["x0_accuracy"]
            ent = r["x0_sc_entropy"] if r.get("x0_sc_entropy") is not None else r["x0_entropy"]
            mass = "" if r.get("training_mass") is None else f" ({r['training_mass']:.2f})"
            cells.append(f"{acc:.3f} / {ent:.2f}{mass}")
        lines.append(f"| {t:.2f} | " + " | ".join(cells) + " |")
    real = next(iter(latents.values())).get("per_t_real_entropy")
    return "\n".join(lines) + (f"\n\nReal continuations: word entropy {real:.2f} bits.\n" if real else "\n")


def render_samples(run: str | Path, split: str, rows: list[str], n: int = 10) -> str:
    """The first sample of each of the first ``n`` openings of ``split`` (file order: no picking), the AR's
    next to each row's in ``rows``, read from the run's ``compare_<split>/samples``; markdown."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"the number of openings to show must be a positive integer, got {n!r}")
    report = Path(run) / f"compare_{split}"
    folder = report / "samples"
    texts: dict[str, dict[str, str]] = {}
    for name in ["ar", *[r for r in rows if r != "ar"]]:
        path = samples_path(report, name)
        if not path.is_file():
            have = sorted(p.stem for p in folder.glob("*.jsonl") if "_seed" not in p.stem) if folder.is_dir() else []
            raise InputError(f"no samples of row {name!r} on {split}.jsonl ({path} is missing); compared rows "
                             f"there: {', '.join(have) or 'none (run compare on that split first)'}")
        first: dict[str, str] = {}
        for i, line in enumerate(path.read_text().splitlines(), 1):
            try:
                rec = json.loads(line)
                first.setdefault(rec["prompt"], rec["continuation"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise InputError(f"{path}, line {i}: not a sample record with prompt and continuation ({e}); "
                                 "rerun compare on that split to rewrite it") from e
        texts[name] = first
    prompts = [p for p in texts["ar"] if all(p in t for t in texts.values())][:n]
    lines = []
    for i, prompt in enumerate(prompts, 1):
        lines.append(f"**{i}. Opening:** {' '.join(prompt.split())}\n")
        for name, t in texts.items():
            lines.append(f"- *{name}:* {' '.join(t[prompt].split())}")
        lines.append("")
    return "\n".join(lines)


BEGIN, END = "<!-- tinystories-results:begin -->", "<!-- tinystories-results:end -->"


def write_docs(results: dict, root: Path, samples: str = "") -> list[Path]:
    """Put the generated tables between the markers of README.md (test split) and docs/tinystories.md
    (both splits, the training times and, when given, ``samples``: :func:`render_samples`); returns the
    files written."""
    last = next(reversed(results["splits"]), None)
    stamp = f"_Generated from the protocol run of {results['finished']} ({results['device']})._\n\n"
    blocks = {root / "README.md": stamp + render_results(results, "test"),
              root / "docs" / "tinystories.md": stamp + "".join(
                  f"`{split}.jsonl`:\n\n{render_results(results, split)}\n" for split in results["splits"])
              + "Training:\n\n" + render_training(results)
              + ("\nSampling (batch 1, this machine):\n\n" + render_sampling(results, last) if last else "")
              + ("\nWhere each latent model loses the text (`valid.jsonl`, per t: its decoded clean estimate; "
                 "the full reports are `latents_*.md` in the run folder):\n\n" + render_per_t(results)
                 if render_per_t(results) else "")
              + (f"\nSamples, the first of each of the first openings of `{last}.jsonl`, 128 new tokens:\n\n"
                 + samples if samples else "")}
    written = []
    for path, block in blocks.items():
        text = path.read_text()
        if BEGIN not in text or END not in text:
            raise InputError(f"{path} has no {BEGIN} ... {END} markers to put the table between")
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        write_text_atomic(path, f"{head}{BEGIN}\n{block}{END}{tail}")
        written.append(path)
    return written
