"""Text autoencoder: token sequences <-> short sequences of normalised, noise-robust latents."""

from latentlm.autoencoder.losses import AutoencoderLossConfig, autoencoder_loss
from latentlm.autoencoder.modeling_autoencoder import (
    TextAutoencoder,
    decode_ids,
    encode_texts,
    token_texts_of,
)

__all__ = [
    "AutoencoderLossConfig",
    "TextAutoencoder",
    "autoencoder_loss",
    "decode_ids",
    "encode_texts",
    "token_texts_of",
]
