"""Baselines trained on the same data and tokenizer as the latent model."""

from latentlm.baselines.autoregressive import ARConfig, CausalLM, ar_loss

__all__ = ["ARConfig", "CausalLM", "ar_loss"]
