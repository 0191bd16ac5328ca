"""Text autoencoder: token sequences <-> short sequences of normalised, noise-robust latents
(the training loss is ``latentlm.autoencoder.losses``)."""

from latentlm.autoencoder.modeling_autoencoder import (
    TextAutoencoder,
    decode_ids,
    encode_prompts,
    encode_texts,
    token_texts_of,
)

__all__ = ["TextAutoencoder", "decode_ids", "encode_prompts", "encode_texts", "token_texts_of"]
