"""Text autoencoder: token sequences <-> short sequences of normalised latents (in progress)."""
