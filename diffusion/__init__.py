"""Latent denoiser, noise schedules, samplers, training loss and the latent likelihood bound."""

from latentlm.diffusion.losses import DenoiserLossConfig, denoiser_loss
from latentlm.diffusion.modeling_denoiser import LatentDenoiser
from latentlm.diffusion.sampling import langevin_correct, sample_pc
from latentlm.diffusion.schedules import NoiseSchedule

__all__ = ["DenoiserLossConfig", "LatentDenoiser", "NoiseSchedule", "denoiser_loss", "langevin_correct",
           "sample_pc"]
