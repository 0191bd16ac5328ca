"""Load saved latentlm models by kind, with clear errors for bad folders.

Weights are read only from safetensors (``use_safetensors=True``); nothing is
unpickled and no remote code is ever trusted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open

from latentlm.errors import CheckpointError


def _model_classes() -> dict[str, type]:
    from latentlm.autoencoder.modeling_autoencoder import TextAutoencoder
    from latentlm.baselines.autoregressive import CausalLM
    from latentlm.baselines.masked_diffusion import MaskedDiffusionLM

    return {"CausalLM": CausalLM, "TextAutoencoder": TextAutoencoder, "MaskedDiffusionLM": MaskedDiffusionLM}


def read_model_config(folder: str | Path) -> dict[str, Any]:
    """``config.json`` of a saved model, checked to name a latentlm class."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"model folder {folder} does not exist")
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{cfg_file} is missing: {folder} is not a saved latentlm model")
    try:
        cfg = json.loads(cfg_file.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict) or cfg.get("_class_name") not in _model_classes():
        raise CheckpointError(
            f"{cfg_file} names class {cfg.get('_class_name') if isinstance(cfg, dict) else None!r}, "
            f"not a latentlm model ({', '.join(_model_classes())})"
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
    cls = _model_classes()[cfg["_class_name"]]
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise CheckpointError(f"no .safetensors weights in {folder}")
    for w in weights:
        check_safetensors(w)
    try:
        return cls.from_pretrained(str(folder), use_safetensors=True, low_cpu_mem_usage=False)
    except Exception as e:  # shape mismatches, missing keys...
        raise CheckpointError(f"cannot load {cfg['_class_name']} from {folder}: {e}") from e


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
