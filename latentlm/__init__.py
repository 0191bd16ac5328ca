"""latentlm: latent-space language diffusion.

Public API (everything importable from ``latentlm`` directly): data, tokenizer
and synthetic stories, the shared layers, the models and their pipeline, the
training loop, configuration and model loading.

Names are imported on first use (PEP 562, as diffusers and transformers do): ``import
latentlm`` is cheap, and ``import latentlm.pipeline_latent_diffusion`` loads what sampling
needs and not the trainer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "TextAutoencoder": "latentlm.autoencoder.modeling_autoencoder",
    "CausalLM": "latentlm.baselines.autoregressive",
    "MaskedDiffusionLM": "latentlm.baselines.masked_diffusion",
    "available_presets": "latentlm.config",
    "resolve_config": "latentlm.config",
    "PackedBatches": "latentlm.data.packing",
    "split_documents": "latentlm.data.packing",
    "tokenize_documents": "latentlm.data.packing",
    "load_hf_dataset": "latentlm.data.readers",
    "read_documents": "latentlm.data.readers",
    "check_story": "latentlm.data.synthetic",
    "corrupt_story": "latentlm.data.synthetic",
    "generate_stories": "latentlm.data.synthetic",
    "generate_story": "latentlm.data.synthetic",
    "load_tokenizer": "latentlm.data.tokenizer",
    "train_tokenizer": "latentlm.data.tokenizer",
    "resolve_device": "latentlm.device",
    "LatentDenoiser": "latentlm.diffusion.modeling_denoiser",
    "CheckpointError": "latentlm.errors",
    "ConfigError": "latentlm.errors",
    "DataError": "latentlm.errors",
    "InputError": "latentlm.errors",
    "LatentLMError": "latentlm.errors",
    "TrainingDivergedError": "latentlm.errors",
    "Transformer": "latentlm.layers",
    "TransformerBlock": "latentlm.layers",
    "load_model": "latentlm.loading",
    "load_pipeline": "latentlm.loading",
    "LossOutput": "latentlm.outputs",
    "GenerationOutput": "latentlm.outputs",
    "ModelKind": "latentlm.kinds",
    "register_kind": "latentlm.kinds",
    "load_language_model": "latentlm.eval.models",
    "LatentDiffusionPipeline": "latentlm.pipeline_latent_diffusion",
    "LatentDiffusionPipelineOutput": "latentlm.pipeline_latent_diffusion",
    "run_training": "latentlm.recipes",
    "TrainConfig": "latentlm.training",
    "TrainResult": "latentlm.training",
    "train": "latentlm.training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'latentlm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    from latentlm.autoencoder.modeling_autoencoder import TextAutoencoder
    from latentlm.baselines.autoregressive import CausalLM
    from latentlm.baselines.masked_diffusion import MaskedDiffusionLM
    from latentlm.config import available_presets, resolve_config
    from latentlm.data.packing import PackedBatches, split_documents, tokenize_documents
    from latentlm.data.readers import load_hf_dataset, read_documents
    from latentlm.data.synthetic import check_story, corrupt_story, generate_stories, generate_story
    from latentlm.data.tokenizer import load_tokenizer, train_tokenizer
    from latentlm.device import resolve_device
    from latentlm.diffusion.modeling_denoiser import LatentDenoiser
    from latentlm.errors import (
        CheckpointError,
        ConfigError,
        DataError,
        InputError,
        LatentLMError,
        TrainingDivergedError,
    )
    from latentlm.eval.models import load_language_model
    from latentlm.kinds import ModelKind, register_kind
    from latentlm.layers import Transformer, TransformerBlock
    from latentlm.loading import load_model, load_pipeline
    from latentlm.outputs import GenerationOutput, LossOutput
    from latentlm.pipeline_latent_diffusion import (
        LatentDiffusionPipeline,
        LatentDiffusionPipelineOutput,
    )
    from latentlm.recipes import run_training
    from latentlm.training import TrainConfig, TrainResult, train
