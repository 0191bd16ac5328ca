"""The one place that decides where latentlm runs and in which compute dtype.

* :func:`resolve_device`: ``"auto"`` is the first CUDA GPU when there is one, else the CPU;
  explicit names are checked to exist.
* :func:`resolve_mixed_precision` (with :func:`mixed_precision_reason`): what ``"auto"``
  autocasts to; :func:`autocast` is the context training runs its forward passes in. On CUDA bf16 where the GPU supports it, else fp16. On the CPU bf16 only
  where it computes bf16 natively (AVX512-BF16 or AMX tiles: about 1.5x faster training);
  elsewhere bf16 is emulated (11x slower on an AVX2-only EPYC), so fp32.

Training, Muon, the quickstart, ``compare`` and the CLI read these; nothing else looks at
``torch.cuda.is_available()`` to choose.
"""

from __future__ import annotations

import contextlib
import os
from typing import Literal

import torch

from latentlm.errors import InputError

MixedPrecision = Literal["auto", "no", "bf16", "fp16"]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX tiles)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private in torch.cpu, so guarded
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: ``None`` or ``"auto"`` picks the first CUDA GPU when there is one,
    else the CPU; ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` are checked to exist."""
    if isinstance(device, torch.device):
        device = str(device)
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} was asked for but torch sees no CUDA GPU; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"device {device!r}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device {device!r} is not supported: use auto, cpu, cuda or cuda:N")
    return dev


def resolve_mixed_precision(choice: MixedPrecision = "auto") -> str:
    """The autocast mode of training (accelerate's ``mixed_precision``): ``choice`` unless it is
    ``"auto"``, which this function decides (see :func:`mixed_precision_reason`)."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "no"


def autocast(mode: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for ``mode`` (an answer of :func:`resolve_mixed_precision`) on ``device``:
    bf16 or fp16 autocast, or nothing for ``"no"``."""
    if mode == "no":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if mode == "bf16" else torch.float16)


def mixed_precision_reason(choice: MixedPrecision = "auto") -> str:
    """One line saying which compute dtype ``choice`` gives here and why (for logs and reports)."""
    mode = resolve_mixed_precision(choice)
    name = {"no": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[mode]
    if choice != "auto":
        return f"{name} (train.mixed_precision={choice})"
    if torch.cuda.is_available():
        why = "the GPU supports bf16" if mode == "bf16" else "the GPU has no bf16"
    else:
        why = ("the CPU computes bf16 natively (AVX512-BF16 or AMX)" if mode == "bf16"
               else "the CPU only emulates bf16, which is slower than fp32")
    return f"{name}: {why}"


def muon_float32_orthogonalisation(device: torch.device) -> bool:
    """Whether Muon's Newton-Schulz iterations run in fp32 rather than torch's bf16: on CPUs
    without native bf16, where emulated bf16 is 9x slower."""
    return device.type == "cpu" and not cpu_has_native_bf16()


def device_name(device: torch.device) -> str:
    """A readable name of ``device`` for reports: the GPU's model, or the CPU and its cores."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores)"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def machine_name() -> str:
    """What a training time was measured on, for telling apart times from different machines: the CPU
    model, its cores and whether it computes bf16 natively, and the first GPU when there is one."""
    name = f"{cpu_model()}, {os.cpu_count()} cores, {'native' if cpu_has_native_bf16() else 'no native'} bf16"
    if torch.cuda.is_available():
        name += f", {torch.cuda.get_device_name(0)}"
    return name


def synchronize(device: torch.device | None = None) -> None:
    """Wait for queued GPU work (for timing); a no-op on the CPU."""
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        torch.cuda.synchronize(device)
