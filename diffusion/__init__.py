"""Latent denoiser, noise schedules and samplers (the training loss is ``latentlm.diffusion.losses``,
the likelihood bound ``latentlm.diffusion.likelihood``)."""

from latentlm.diffusion.modeling_denoiser import LatentDenoiser
from latentlm.diffusion.sampling import langevin_correct
from latentlm.diffusion.schedules import NoiseSchedule

__all__ = ["LatentDenoiser", "NoiseSchedule", "langevin_correct"]
