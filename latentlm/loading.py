"""Load saved latentlm models by kind, with clear errors for bad folders.

Weights are read only from safetensors (``use_safetensors=True``); nothing is
unpickled and no remote code is ever trusted.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import diffusers
import torch
from safetensors import safe_open

from latentlm.baselines.autoregressive import CausalLM
from latentlm.baselines.parallel_token_prediction import ParallelTokenPredictor, check_pair
from latentlm.data.tokenizer import load_tokenizer
from latentlm.diffusion.time_density import time_cdf
from latentlm.errors import CheckpointError, InputError
from latentlm.kinds import KINDS, resolve
from latentlm.pipeline_latent_diffusion import LatentDiffusionPipeline


def model_classes() -> dict[str, type]:
    """Class name -> class of every registered kind's saved model (:mod:`latentlm.kinds`)."""
    return {kind.class_name: resolve(kind.model_class) for kind in KINDS.values() if kind.model_class}


def _read_json(file: Path, what: str) -> Any:
    """The JSON content of ``file``, or CheckpointError saying the folder is not ``what``."""
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: {file.parent} is not {what}")
    try:
        return json.loads(file.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from None


def read_model_config(folder: str | Path) -> dict[str, Any]:
    """``config.json`` of a saved model, checked to name a latentlm class."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"model folder {folder} does not exist")
    cfg_file = folder / "config.json"
    cfg = _read_json(cfg_file, "a saved latentlm model")
    classes = model_classes()
    if not isinstance(cfg, dict) or cfg.get("_class_name") not in classes:
        raise CheckpointError(
            f"{cfg_file} names class {cfg.get('_class_name') if isinstance(cfg, dict) else None!r}, "
            f"not a latentlm model ({', '.join(classes)})"
        )
    return cfg


def check_safetensors(path: Path) -> None:
    """Raise CheckpointError when ``path`` is missing or not a readable safetensors file."""
    if not path.is_file():
        raise CheckpointError(f"weights file {path} is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has no iteration protocol
                f.get_slice(key)
    except Exception as e:  # safetensors raises SafetensorError / OSError variants
        raise CheckpointError(f"weights file {path} is corrupt or truncated: {e}") from None


def load_model(folder: str | Path):
    """Load the model saved in ``folder`` (any latentlm kind)."""
    folder = Path(folder)
    cfg = read_model_config(folder)
    cls = model_classes()[cfg["_class_name"]]
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise CheckpointError(f"no .safetensors weights in {folder}")
    for w in weights:
        check_safetensors(w)
    try:
        return cls.from_pretrained(str(folder), use_safetensors=True, low_cpu_mem_usage=False)
    except Exception as e:  # shape mismatches, missing keys...
        raise CheckpointError(f"cannot load {cfg['_class_name']} from {folder}: {e}") from e


def is_pipeline_folder(folder: str | Path) -> bool:
    return (Path(folder) / "model_index.json").is_file()


def load_pipeline(folder: str | Path):
    """Load a :class:`~latentlm.LatentDiffusionPipeline` folder, checking every component
    first so that a missing or corrupt file gives an error naming it."""
    folder = Path(folder)
    spec = _read_json(folder / "model_index.json", "a saved latent diffusion pipeline")
    for name in ("tokenizer", "autoencoder", "denoiser", "scheduler"):
        if name not in spec or not (folder / name).is_dir():
            raise CheckpointError(f"pipeline component {name!r} is missing from {folder}")
    tokenizer = load_tokenizer(folder / "tokenizer")
    autoencoder = load_model(folder / "autoencoder")
    denoiser = load_model(folder / "denoiser")
    denoiser_2 = None  # the low-noise time expert, when the pipeline has two
    if (spec.get("denoiser_2") or [None])[0] is not None:
        if not (folder / "denoiser_2").is_dir():
            raise CheckpointError(f"pipeline component 'denoiser_2' is missing from {folder}")
        denoiser_2 = load_model(folder / "denoiser_2")
    sched_file = folder / "scheduler" / "scheduler_config.json"
    try:
        sched_cfg = json.loads(sched_file.read_text("utf-8"))
        scheduler = getattr(diffusers, sched_cfg["_class_name"]).from_config(sched_cfg)
    except (OSError, json.JSONDecodeError, KeyError, AttributeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{sched_file} is missing or malformed: {e}") from None
    return LatentDiffusionPipeline(tokenizer=tokenizer, autoencoder=autoencoder, denoiser=denoiser,
                                   scheduler=scheduler, denoiser_2=denoiser_2, boundary=spec.get("boundary"),
                                   sampling_mode=spec.get("sampling_mode", "parallel"),  # saved before modes: parallel
                                   window_blocks=spec.get("window_blocks", 4),
                                   training_times=spec.get("training_times"))  # saved before the check: None


def load_ptp(folder: str | Path) -> tuple[ParallelTokenPredictor, CausalLM]:
    """The PTP model saved in ``folder`` and the AR that verifies it (``folder/teacher``), checked to
    be a pair of the same tokenizer."""
    folder = Path(folder)
    student = load_model(folder)
    if not isinstance(student, ParallelTokenPredictor):
        raise CheckpointError(f"{folder} holds a {type(student).__name__}, not a PTP model (ParallelTokenPredictor)")
    if not (folder / "teacher").is_dir():
        raise CheckpointError(f"{folder / 'teacher'} is missing: a PTP folder keeps the AR that verifies its drafts")
    teacher = load_model(folder / "teacher")
    if not isinstance(teacher, CausalLM):
        raise CheckpointError(f"{folder / 'teacher'} holds a {type(teacher).__name__}, not an AR model (CausalLM)")
    if load_tokenizer(folder).get_vocab() != load_tokenizer(folder / "teacher").get_vocab():
        raise CheckpointError(f"{folder} and its teacher have different tokenizers")
    try:
        check_pair(student, teacher)
    except InputError as e:
        raise CheckpointError(f"{folder}: {e}") from None
    return student, teacher


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _coverage(pipe, steps: int = 32) -> dict[str, Any]:
    """The times of the saved sampler's ``steps`` steps at which the denoiser hardly trained."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bad = pipe.check_time_coverage(steps, spacing=pipe.step_spacing())
    return {f"untrained_steps_at_{steps}": [round(t, 3) for t in bad]} if pipe.config.training_times else {}


def _summary(spec: dict | None) -> dict | None:
    """A training-time description for reading: a learned density's bins as the times of its deciles."""
    if not spec or "bins" not in spec:
        return spec
    grid = torch.linspace(0, 1, 1001, dtype=torch.float64)
    cdf = time_cdf(spec, grid)
    deciles = [round(float(grid[int(torch.searchsorted(cdf, q))]), 3) for q in (0.1, 0.5, 0.9)]
    return {**{k: v for k, v in spec.items() if k != "bins"}, "bins": len(spec["bins"]),
            "t_at_10_50_90_percent": deciles}


def describe(folder: str | Path) -> dict[str, Any]:
    """Class, parameter count and config of a saved model or pipeline (``latentlm info``)."""
    folder = Path(folder)
    if is_pipeline_folder(folder):
        pipe = load_pipeline(folder)
        parts = {name: count_parameters(getattr(pipe, name)) for name in ("autoencoder", "denoiser", "denoiser_2")
                 if getattr(pipe, name) is not None}
        return {"class": "LatentDiffusionPipeline", "parameters": sum(parts.values()),
                "components": parts, "scheduler": type(pipe.scheduler).__name__,
                "autoencoder": {k: v for k, v in pipe.autoencoder.config.items()
                                if not k.startswith("_") and k != "token_texts"},
                "denoiser": {k: v for k, v in pipe.denoiser.config.items() if not k.startswith("_")},
                "sampling_mode": pipe.config.sampling_mode,
                "training_times": _summary(pipe.config.training_times), **_coverage(pipe),
                **({"boundary": pipe.config.boundary} if pipe.denoiser_2 is not None else {})}
    cfg = read_model_config(folder)
    model = load_model(folder)
    return {"class": cfg["_class_name"], "parameters": count_parameters(model),
            "config": {k: v for k, v in cfg.items() if not k.startswith("_") and k != "token_texts"}}
