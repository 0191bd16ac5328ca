"""The one training loop of latentlm, on accelerate, used by every model.

``train(model, loss_fn, data, cfg, out_dir)`` runs AdamW (or Muon on the
transformer blocks' matrices: :mod:`latentlm.optim`) with warmup + cosine
(diffusers' ``get_scheduler``), gradient clipping and accumulation, mixed
precision (decided in :mod:`latentlm.device`), optional EMA
(diffusers' ``EMAModel``), periodic validation, atomic checkpoints, resume,
a tqdm bar with loss and tokens/s, a JSONL metrics log, a clear stop on a
non-finite loss, and a checkpoint on SIGTERM / Ctrl-C.

Data is any object with ``batch(step) -> dict[str, Tensor]`` returning the
*global* batch of that step (e.g. :class:`latentlm.data.PackedBatches`).
Because a batch depends only on the step, a resumed run sees exactly the
batches an uninterrupted one would, and each data-parallel rank takes rows
``rank::world_size`` of the same global batch (a source whose ``batch`` takes
``rank`` and ``world`` reads those rows alone).

Checkpoint layout (``out_dir/checkpoints``)::

    step-00000100/         accelerate save_state + trainer_state.json (written last)
    latest                 one line naming the newest complete checkpoint

A checkpoint is written to a temporary folder, checksummed, then renamed;
``latest`` is replaced atomically afterwards, so it never names a half-written
checkpoint. On resume a checkpoint that fails its checksums is skipped with a
warning and the previous valid one is used. Optimizer and RNG state inside
checkpoints are accelerate's pickled files: the one place latentlm reads
pickles, and only from the user's own runs.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from latentlm.device import (
    MixedPrecision,
    autocast,
    mixed_precision_reason,
    resolve_mixed_precision,
)
from latentlm.errors import CheckpointError, ConfigError, TrainingDivergedError
from latentlm.files import move_tree, replace_dir, sha256, write_text_atomic
from latentlm.optim import OPTIMIZERS, make_optimizer
from latentlm.outputs import Batch, LossFn, LossOutput

__all__ = ["BatchSource", "LossFn", "LossOutput", "TrainConfig", "TrainResult", "train"]


class BatchSource(Protocol):
    def batch(self, step: int) -> Batch: ...


@dataclass
class TrainConfig:
    """Optimisation settings shared by every model (``[<kind>.train]`` in presets)."""

    steps: int = 1000
    batch_size: int = 32  # global batch, sequences per optimizer step
    grad_accum: int = 1
    lr: float = 3e-4
    optimizer: str = "adamw"  # or "muon": Muon on the transformer blocks' matrices, AdamW on the rest
    warmup_steps: int = 100
    lr_schedule: str = "cosine"  # any diffusers get_scheduler name
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    mixed_precision: MixedPrecision = "auto"
    ema_decay: float = 0.0  # 0 disables EMA
    eval_every: int = 0  # 0: only at the end
    eval_batches: int = 8
    save_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    log_with: Literal["none", "tensorboard"] = "none"

    def validate(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "eval_batches", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "save_every", "grad_clip", "weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"train.batch_size ({self.batch_size}) must be divisible by train.grad_accum ({self.grad_accum})"
            )


@dataclass
class TrainResult:
    step: int
    train_loss: float
    valid_loss: float | None
    interrupted: bool
    out_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)


# ----------------------------------------------------------------------------- checkpoints

STATE_FILE = "trainer_state.json"


def validate_checkpoint(path: Path) -> dict[str, Any]:
    """Return a checkpoint's trainer state, or raise CheckpointError naming the bad file."""
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(f"{path} is incomplete: {STATE_FILE} is missing")
    try:
        state = json.loads(state_file.read_text("utf-8"))
        manifest = state["files"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{state_file} is malformed: {e}") from None
    for name, digest in manifest.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f} is missing")
        if sha256(f) != digest:
            raise CheckpointError(f"{f} is corrupt (checksum mismatch)")
    return state


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Checkpoints to try on resume, best first: the one ``latest`` names, then newest first."""
    if not ckpt_root.is_dir():
        return []
    found = sorted((p for p in ckpt_root.glob("step-*") if p.is_dir()), reverse=True)
    latest = ckpt_root / "latest"
    if latest.is_file():
        named = ckpt_root / latest.read_text("utf-8").strip()
        if named in found:
            found.remove(named)
            found.insert(0, named)
    return found


# ----------------------------------------------------------------------------- the loop


class _StopSignal:
    """Turns SIGTERM / SIGINT into a flag checked after each step."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _TrainerState:
    """Step counter checkpointed with accelerate's custom objects."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


def _count_tokens(batch: Batch) -> int:
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    if "input_ids" in batch:
        return batch["input_ids"].numel()
    return 0


def _local_batches(data: BatchSource, step: int, rank: int, world: int, accum: int) -> list[Batch]:
    """This process's rows of the global batch of ``step``, as ``accum`` micro-batches; read alone when the
    source can (``batch(step, rank=, world=)``, e.g. token shards), else cut from the global batch."""
    if "rank" in inspect.signature(data.batch).parameters:
        return _shard(data.batch(step, rank=rank, world=world), 0, 1, accum)
    return _shard(data.batch(step), rank, world, accum)


def _shard(batch: Batch, rank: int, world: int, accum: int) -> list[Batch]:
    """Rows ``rank::world`` of the global batch, split into ``accum`` micro-batches."""
    local = {k: v[rank::world] for k, v in batch.items()}
    n = next(iter(local.values())).shape[0]
    size = n // accum
    return [{k: v[i * size : (i + 1) * size] for k, v in local.items()} for i in range(accum)]


def default_export(model: torch.nn.Module, folder: Path) -> None:
    model.save_pretrained(folder)  # type: ignore[operator]


def train(
    model: torch.nn.Module,
    loss_fn: LossFn,
    data: BatchSource,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    valid_batches: list[Batch] | None = None,
    resume: bool = True,
    export: Callable[[torch.nn.Module, Path], None] | None = default_export,
    stop_after: int | None = None,
    run_config: dict[str, Any] | None = None,
    accelerator: Accelerator | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` on ``data`` with ``loss_fn``; checkpoint into and export to ``out_dir``.

    Args:
        model: any ``nn.Module``; exported with ``export(model, out_dir)`` at the end
            (EMA weights when EMA is on).
        loss_fn: ``loss_fn(model, micro_batch) -> LossOutput``.
        data: ``data.batch(step)`` gives the global batch of a step.
        cfg: optimisation settings.
        out_dir: run folder: ``checkpoints/``, ``metrics.jsonl``, exported model.
        valid_batches: fixed batches for validation loss.
        resume: continue from the newest valid checkpoint in ``out_dir`` if any.
        export: how to save the final model; None to skip.
        stop_after: stop (with a checkpoint) once this step is reached, without
            changing the schedule: for training in chunks.
        run_config: saved as ``run_config.json`` for reproducibility.
        accelerator: an existing Accelerator (one per process); made from cfg if None.
        progress: show a tqdm bar on the main process.

    Returns:
        the final step, losses, and whether a signal interrupted the run.

    Raises:
        TrainingDivergedError: the loss became NaN or infinite (the last
            checkpoint is kept; nothing is exported).
    """
    out_dir = Path(out_dir)
    # 1. the accelerator, the checks that need it, the run folder
    accelerator = accelerator or _new_accelerator(cfg, out_dir)
    world = accelerator.num_processes
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ConfigError(
            f"train.batch_size ({cfg.batch_size}) must be divisible by processes x grad_accum "
            f"({world} x {cfg.grad_accum})"
        )
    if resume:
        _check_same_optimizer(out_dir / "checkpoints", cfg.optimizer)
    set_seed(cfg.seed)
    if accelerator.is_main_process:
        _prepare_folder(out_dir, cfg, run_config)
    # 2. optimizer, schedule, EMA, checkpointed state; resume
    run = _Run.start(model, loss_fn, cfg, accelerator, out_dir, valid_batches or [])
    if cfg.log_with != "none":
        accelerator.init_trackers(out_dir.name, config=asdict(cfg))
    if resume:
        run.resume()
    # 3. the loop: a checkpoint every save_every steps and on a signal
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    interrupted = run.loop(data, end, progress)
    # 4. at the last step: final validation and export
    if run.state.step >= cfg.steps and not interrupted:
        run.finish(export)
    accelerator.wait_for_everyone()
    if cfg.log_with != "none":
        accelerator.end_training()
    return TrainResult(run.state.step, run.last_loss, run.valid_loss, interrupted, out_dir, run.history)


def _new_accelerator(cfg: TrainConfig, out_dir: Path) -> Accelerator:
    """An Accelerator for one run. accelerate keeps one process-wide precision that a later Accelerator
    may not change, and each run may pick its own, so the Accelerator stays in fp32 and the run
    autocasts itself (:class:`_Run`, with :func:`latentlm.device.autocast`)."""
    return Accelerator(mixed_precision="no", log_with=None if cfg.log_with == "none" else cfg.log_with,
                       project_dir=str(out_dir))


def _prepare_folder(out_dir: Path, cfg: TrainConfig, run_config: dict[str, Any] | None) -> None:
    """The run folder, its checkpoint folder and ``run_config.json`` (with the compute dtype)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "checkpoints").mkdir(exist_ok=True)
    if run_config is not None:
        run_config = {**run_config, "compute_dtype": mixed_precision_reason(cfg.mixed_precision)}
        write_text_atomic(out_dir / "run_config.json", json.dumps(run_config, indent=2, default=str))


@dataclass
class _Run:
    """One training run in progress: the prepared model and its optimizer, schedule, EMA and step, its
    files, and what it has logged."""

    cfg: TrainConfig
    accelerator: Accelerator
    model: torch.nn.Module  # as prepared by accelerate (maybe wrapped)
    unwrapped: torch.nn.Module
    loss_fn: LossFn
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: EMAModel | None
    state: _TrainerState
    out_dir: Path
    valid_batches: list[Batch]
    precision: str  # resolve_mixed_precision's answer: "no", "bf16" or "fp16"
    scaler: torch.amp.GradScaler  # enabled for fp16 only
    history: list[dict[str, Any]] = field(default_factory=list)
    last_loss: float = float("nan")
    valid_loss: float | None = None

    @classmethod
    def start(cls, model: torch.nn.Module, loss_fn: LossFn, cfg: TrainConfig, accelerator: Accelerator,
              out_dir: Path, valid_batches: list[Batch]) -> _Run:
        optimizer = make_optimizer(model, cfg.optimizer, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                   weight_decay=cfg.weight_decay)
        scheduler = get_scheduler(cfg.lr_schedule, optimizer, num_warmup_steps=cfg.warmup_steps,
                                  num_training_steps=cfg.steps)
        model, optimizer = accelerator.prepare(model, optimizer)
        unwrapped = accelerator.unwrap_model(model)
        state = _TrainerState()
        accelerator.register_for_checkpointing(scheduler, state)
        ema = None
        if cfg.ema_decay > 0:
            ema = EMAModel(unwrapped.parameters(), decay=cfg.ema_decay)
            ema.to(accelerator.device)
            accelerator.register_for_checkpointing(ema)
        precision = resolve_mixed_precision(cfg.mixed_precision)
        scaler = torch.amp.GradScaler(accelerator.device.type, enabled=precision == "fp16")
        if scaler.is_enabled():  # registered only when used: fp32 and bf16 checkpoints keep their files
            accelerator.register_for_checkpointing(scaler)
        return cls(cfg, accelerator, model, unwrapped, loss_fn, optimizer, scheduler, ema, state, out_dir,
                   valid_batches, precision, scaler)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.precision, self.accelerator.device)

    @property
    def ckpt_root(self) -> Path:
        return self.out_dir / "checkpoints"

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def resume(self) -> None:
        _resume(self.accelerator, self.ckpt_root)
        if self.ema is not None:
            self.ema.to(self.accelerator.device)  # EMAModel.load_state_dict keeps the checkpoint's (CPU) tensors

    def save_checkpoint(self) -> None:
        """accelerate's state into a temporary folder, checksummed, renamed; then ``latest`` (atomic)."""
        acc, root = self.accelerator, self.ckpt_root
        name = f"step-{self.state.step:08d}"
        tmp = root / f".tmp-{name}"
        if self.main and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        if self.main:
            files = {p.name: sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            write_text_atomic(tmp / STATE_FILE, json.dumps({"step": self.state.step, "optimizer": self.cfg.optimizer,
                                                             "files": files}))
            replace_dir(tmp, root / name)
            write_text_atomic(root / "latest", name + "\n")
            for old in sorted(root.glob("step-*"))[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def evaluate(self) -> float | None:
        """Mean loss over the validation batches (fixed RNG, so every evaluation draws the same noise)."""
        if not self.valid_batches:
            return None
        self.model.eval()
        losses = []
        with torch.no_grad(), torch.random.fork_rng(devices=[]), self.autocast():
            torch.manual_seed(self.cfg.seed + 1)
            for vb in self.valid_batches[: self.cfg.eval_batches]:
                vb = {k: v.to(self.accelerator.device) for k, v in vb.items()}
                losses.append(float(self.loss_fn(self.model, vb).loss))
        self.model.train()
        return sum(losses) / len(losses)

    def step(self, micro_batches: list[Batch]) -> tuple[torch.Tensor, dict[str, float], int]:
        """One optimizer step over the micro-batches (gradients synchronised on the last); returns the
        step's loss, its metrics and the tokens this process saw."""
        acc, cfg = self.accelerator, self.cfg
        step_loss = torch.zeros((), device=acc.device)
        metrics: dict[str, float] = {}
        tokens = 0
        for i, mb in enumerate(micro_batches):
            mb = {k: v.to(acc.device) for k, v in mb.items()}
            sync = i == len(micro_batches) - 1
            with contextlib.nullcontext() if sync else acc.no_sync(self.model):
                with self.autocast():
                    out = self.loss_fn(self.model, mb)
                acc.backward(self.scaler.scale(out.loss / cfg.grad_accum))
            step_loss += out.loss.detach().float() / cfg.grad_accum
            for k, v in out.metrics.items():
                metrics[k] = metrics.get(k, 0.0) + float(v) / cfg.grad_accum
            tokens += _count_tokens(mb)
        if not torch.isfinite(step_loss):
            raise TrainingDivergedError(
                f"loss became {step_loss.item()} at step {self.state.step}; nothing was saved after the "
                f"last checkpoint in {self.ckpt_root}. Lower train.lr, raise train.warmup_steps or set "
                "train.grad_clip, then resume."
            )
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            acc.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)  # optimizer.step() unless fp16 gradients overflowed
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.unwrapped.parameters())
        self.state.step += 1
        return step_loss, metrics, tokens

    def log(self, record: dict[str, Any]) -> None:
        """A metrics record into the history, ``metrics.jsonl`` and the tracker."""
        self.history.append(record)
        if self.main:
            with (self.out_dir / "metrics.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        if self.cfg.log_with != "none":
            self.accelerator.log(record, step=self.state.step)

    def loop(self, data: BatchSource, end: int, progress: bool) -> bool:
        """Steps until ``end``; returns whether a signal stopped it (a checkpoint is saved either way)."""
        acc, cfg = self.accelerator, self.cfg
        rank, world = acc.process_index, acc.num_processes
        bar = tqdm(total=cfg.steps, initial=self.state.step, disable=not (self.main and progress),
                   desc=self.out_dir.name, dynamic_ncols=True)
        self.model.train()
        interrupted, tokens_seen, steps_seen, t0 = False, 0, 0, time.perf_counter()
        with _StopSignal() as stop:
            while self.state.step < end:
                try:
                    step_loss, metrics, tokens = self.step(_local_batches(data, self.state.step, rank, world,
                                                                          cfg.grad_accum))
                except TrainingDivergedError:
                    bar.close()
                    raise
                tokens_seen += tokens * world
                steps_seen += 1
                self.last_loss = float(acc.reduce(step_loss, "mean"))
                bar.update(1)
                if self.state.step % cfg.log_every == 0 or self.state.step == end:
                    elapsed = time.perf_counter() - t0
                    record = {"step": self.state.step, "loss": self.last_loss, "lr": self.scheduler.get_last_lr()[0],
                              "tokens_per_s": tokens_seen / max(elapsed, 1e-9), "seconds": elapsed,
                              "interval_steps": steps_seen, **metrics}  # steps timed by "seconds"
                    if cfg.eval_every and self.state.step % cfg.eval_every == 0:
                        self.valid_loss = record["valid_loss"] = self.evaluate()
                    bar.set_postfix(loss=f"{self.last_loss:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
                    self.log(record)
                    tokens_seen, steps_seen, t0 = 0, 0, time.perf_counter()
                if cfg.save_every and self.state.step % cfg.save_every == 0 and self.state.step < end:
                    self.save_checkpoint()
                if stop.received is not None:
                    interrupted = True
                    break
            bar.close()
            self.save_checkpoint()  # still under the signal guard: a second signal is what stops it now
        return interrupted

    def finish(self, export: Callable[[torch.nn.Module, Path], None] | None) -> None:
        """The final validation loss (in ``metrics.jsonl``) and the export (EMA weights when EMA is on)."""
        if self.valid_batches:
            self.valid_loss = self.evaluate()
            if self.main:
                with (self.out_dir / "metrics.jsonl").open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": self.state.step, "valid_loss": self.valid_loss}) + "\n")
        if export is not None and self.main:
            _export(self.unwrapped, self.ema, export, self.out_dir)


def _check_same_optimizer(ckpt_root: Path, optimizer: str) -> None:
    """Refuse (before anything is written) to resume checkpoints of another optimizer: their
    state cannot be loaded, and starting over would replace them."""
    for path in list_checkpoints(ckpt_root):
        try:
            saved = validate_checkpoint(path).get("optimizer", "adamw")  # absent in AdamW-only checkpoints
        except CheckpointError:
            continue  # _resume warns about it
        if saved != optimizer:
            raise ConfigError(
                f"{ckpt_root.parent} holds checkpoints of a run with train.optimizer={saved!r}, but this run "
                f"uses {optimizer!r}: resume it with "
                f"--set train.optimizer={saved}, or pass a new --out")
        return


def _resume(accelerator: Accelerator, ckpt_root: Path) -> None:
    for i, path in enumerate(list_checkpoints(ckpt_root)):
        try:
            validate_checkpoint(path)
            accelerator.load_state(str(path))
        except CheckpointError as e:
            warnings.warn(f"skipping checkpoint: {e}; trying an older one", stacklevel=3)
            continue
        except Exception as e:  # noqa: BLE001 - accelerate raises many types on bad files
            warnings.warn(f"skipping checkpoint {path}: cannot load it ({e})", stacklevel=3)
            continue
        if i > 0:
            warnings.warn(f"resumed from the older checkpoint {path.name}", stacklevel=3)
        return


def _export(model, ema, export, out_dir: Path) -> None:
    """Export (EMA weights if any) into a temporary folder, then move files into out_dir."""
    tmp = out_dir / ".export-tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    if ema is not None:
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
    try:
        export(model, tmp)
    finally:
        if ema is not None:
            ema.restore(model.parameters())
    move_tree(tmp, out_dir)
