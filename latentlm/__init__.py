"""latentlm: latent-space language diffusion."""

__version__ = "0.1.0"
