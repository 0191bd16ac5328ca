import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentlm.baselines.autoregressive import ar_loss
from latentlm.device import resolve_mixed_precision
from latentlm.errors import ConfigError, TrainingDivergedError
from latentlm.training import (
    LossOutput,
    TrainConfig,
    list_checkpoints,
    train,
    validate_checkpoint,
)

from .scripts.fault_injection import finish, start_tiny_run
from .scripts.tiny_run import RandomTokens, tiny_model


def cfg(**kw):
    base = dict(steps=10, batch_size=8, lr=1e-2, warmup_steps=2, mixed_precision="no", log_every=1,
                ema_decay=0.5)
    base.update(kw)
    return TrainConfig(**base)


def weights(folder):
    (f,) = Path(folder).glob("*.safetensors")
    return load_file(f)


def same_weights(a, b):
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_overfits_one_batch(tmp_path):
    class OneBatch:
        def batch(self, step):
            return RandomTokens().batch(0)

    r = train(tiny_model(), ar_loss, OneBatch(), cfg(steps=150, ema_decay=0.0, warmup_steps=10), tmp_path,
              progress=False)
    first = r.history[0]["loss"]
    assert first > 3.0 and r.train_loss < 0.1, (first, r.train_loss)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_on_cpu_is_bf16_only_where_native(monkeypatch, native):
    """Emulated bf16 (an AVX2-only CPU) trains 11x slower than fp32: auto must pick fp32 there."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert resolve_mixed_precision("auto") == ("bf16" if native else "no")
    assert resolve_mixed_precision("bf16") == "bf16"  # an explicit choice is kept


@pytest.mark.parametrize("mp", ["no", "bf16", "fp16"])
def test_resume_gives_identical_weights(tmp_path, mp):
    """Runs of several precisions in one process; fp16's loss scale is checkpointed with the rest."""
    train(tiny_model(), ar_loss, RandomTokens(), cfg(mixed_precision=mp), tmp_path / "full", progress=False)
    part = train(tiny_model(), ar_loss, RandomTokens(), cfg(mixed_precision=mp), tmp_path / "split",
                 stop_after=4, progress=False)
    assert part.step == 4 and not (tmp_path / "split" / "config.json").exists()
    rest = train(tiny_model(), ar_loss, RandomTokens(), cfg(mixed_precision=mp), tmp_path / "split",
                 progress=False)
    assert rest.step == 10 and len(rest.history) == 6  # steps 5..10 only
    assert same_weights(tmp_path / "full", tmp_path / "split")
    ckpt_full = list_checkpoints(tmp_path / "full" / "checkpoints")[0]
    ckpt_split = list_checkpoints(tmp_path / "split" / "checkpoints")[0]
    a, b = load_file(ckpt_full / "model.safetensors"), load_file(ckpt_split / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # raw (non-EMA) weights too
    registered = list(ckpt_split.glob("custom_checkpoint_*.pkl"))  # schedule, step, EMA (+ fp16's scaler)
    assert len(registered) == 2 + (cfg().ema_decay > 0) + (mp == "fp16")


@pytest.mark.slow
def test_kill_during_checkpoint_write_keeps_previous_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert finish(start_tiny_run(str(out), "10", "--save-every", "3", "--kill-on-save", "2")) == -signal.SIGKILL
    root = out / "checkpoints"
    assert (root / "latest").read_text().strip() == "step-00000003"
    assert validate_checkpoint(root / "step-00000003")["step"] == 3
    assert not (root / "step-00000006").exists()  # the half-written one never got its name
    assert finish(start_tiny_run(str(out), "10", "--save-every", "3")) == 0
    assert json.loads((out / "result-rank0.json").read_text())["step"] == 10
    # the reference is the same script uninterrupted: one CPU thread, as the killed run had
    assert finish(start_tiny_run(str(tmp_path / "ref"), "10", "--save-every", "3")) == 0
    assert same_weights(out, tmp_path / "ref")


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = start_tiny_run(str(out), "100000", "--slow")
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() or len((out / "metrics.jsonl").read_text().splitlines()) < 3:
        assert time.time() < deadline and proc.is_alive(), "training did not start"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGTERM)
    assert finish(proc, 120) == 0
    result = json.loads((out / "result-rank0.json").read_text())
    assert result["interrupted"] and 3 <= result["step"] < 100000
    latest = (out / "checkpoints" / "latest").read_text().strip()
    assert validate_checkpoint(out / "checkpoints" / latest)["step"] == result["step"]


def test_corrupt_checkpoint_falls_back_with_warning(tmp_path):
    train(tiny_model(), ar_loss, RandomTokens(), cfg(steps=8, save_every=2), tmp_path, stop_after=6,
          progress=False)
    root = tmp_path / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["step-00000006", "step-00000004"]
    f = root / "step-00000006" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF  # one flipped bit pattern in the tensor data
    f.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="corrupt"):
        r = train(tiny_model(), ar_loss, RandomTokens(), cfg(steps=8, save_every=2), tmp_path, progress=False)
    assert r.step == 8 and r.history[0]["step"] == 5  # resumed from step 4


def test_nan_loss_stops_clearly(tmp_path):
    def exploding(model, batch):
        out = ar_loss(model, batch)
        return LossOutput(out.loss * float("nan")) if os.environ.get("X") is None else out

    with pytest.raises(TrainingDivergedError, match="loss became nan at step 0"):
        train(tiny_model(), exploding, RandomTokens(), cfg(), tmp_path, progress=False)


def test_bad_batch_geometry(tmp_path):
    with pytest.raises(ConfigError, match="divisible"):
        cfg(batch_size=8, grad_accum=3).validate()
    with pytest.raises(ConfigError, match="positive"):
        cfg(steps=0).validate()


def test_grad_accumulation_matches_full_batch(tmp_path):
    a = train(tiny_model(), ar_loss, RandomTokens(), cfg(steps=3, ema_decay=0.0), tmp_path / "a", progress=False)
    b = train(tiny_model(), ar_loss, RandomTokens(), cfg(steps=3, ema_decay=0.0, grad_accum=4), tmp_path / "b",
              progress=False)
    assert [h["loss"] for h in a.history] == pytest.approx([h["loss"] for h in b.history], abs=1e-5)
