"""latentlm: latent-space language diffusion.

Public API (everything importable from ``latentlm`` directly): data, tokenizer
and synthetic stories, the shared layers, the training loop, configuration,
the baselines and model loading.
"""

from latentlm.autoencoder.modeling_autoencoder import TextAutoencoder
from latentlm.baselines.autoregressive import ARConfig, CausalLM
from latentlm.baselines.masked_diffusion import MaskedDiffusionLM
from latentlm.config import available_presets, resolve_config
from latentlm.data.packing import PackedBatches, split_documents, tokenize_documents
from latentlm.data.readers import load_hf_dataset, read_documents
from latentlm.data.synthetic import check_story, corrupt_story, generate_stories, generate_story
from latentlm.data.tokenizer import load_tokenizer, train_tokenizer
from latentlm.diffusion.modeling_denoiser import LatentDenoiser
from latentlm.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    InputError,
    LatentLMError,
    TrainingDivergedError,
)
from latentlm.layers import Transformer, TransformerBlock
from latentlm.loading import load_model, load_pipeline
from latentlm.pipeline_latent_diffusion import (
    LatentDiffusionPipeline,
    LatentDiffusionPipelineOutput,
)
from latentlm.recipes import run_training
from latentlm.training import LossOutput, TrainConfig, TrainResult, train

__version__ = "0.1.0"

__all__ = [
    "ARConfig",
    "CausalLM",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "InputError",
    "LatentDenoiser",
    "LatentDiffusionPipeline",
    "LatentDiffusionPipelineOutput",
    "LatentLMError",
    "LossOutput",
    "MaskedDiffusionLM",
    "PackedBatches",
    "TextAutoencoder",
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "Transformer",
    "TransformerBlock",
    "available_presets",
    "check_story",
    "corrupt_story",
    "generate_stories",
    "generate_story",
    "load_hf_dataset",
    "load_model",
    "load_pipeline",
    "load_tokenizer",
    "read_documents",
    "resolve_config",
    "run_training",
    "split_documents",
    "tokenize_documents",
    "train",
    "train_tokenizer",
]
