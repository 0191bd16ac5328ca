"""Latent denoiser, noise schedules, samplers and the latent likelihood bound (in progress)."""
