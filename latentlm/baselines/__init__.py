"""Baselines trained on the same data and tokenizer as the latent model: autoregressive (exact
likelihood, KV cache) and masked token diffusion (MDLM)."""

from latentlm.baselines.autoregressive import CausalLM, ar_loss
from latentlm.baselines.masked_diffusion import MaskedDiffusionLM, mdlm_loss

__all__ = ["CausalLM", "MaskedDiffusionLM", "ar_loss", "mdlm_loss"]
