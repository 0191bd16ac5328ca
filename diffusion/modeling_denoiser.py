"""LatentDenoiser: a transformer over latent positions that predicts clean latents.

Input sequence (left-padded prompt so that the prompt always ends right before
the target, whatever its length)::

    [null] [pad ... pad] [prompt latents (clean)] [target latents z_t (noisy)]

* time conditioning: adaLN-Zero on an embedding of t (shared layers);
* prompt conditioning: the encoded prompt's clean latents as extra context
  tokens with a type embedding; any prompt length works; a learned null token
  is always present, and is all the context when the prompt is dropped
  (classifier-free guidance, trained by prompt dropout);
* self-conditioning: the previous clean estimate is concatenated to z_t;
* parameterisation: the network output F is read as the clean latent
  (``"x0"``), the noise (``"eps"``) or the velocity (``"v"``); ``predict_x0``
  always returns the clean-latent estimate.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from latentlm.diffusion.schedules import SCHEDULES, NoiseSchedule
from latentlm.errors import InputError, check_choice
from latentlm.layers import TimestepEmbedder, Transformer

PARAMETERISATIONS = ("x0", "eps", "v")


class LatentDenoiser(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(
        self,
        latent_dim: int = 64,
        dim: int = 256,
        depth: int = 6,
        n_heads: int = 4,
        mlp_ratio: float = 4.0,
        max_latents: int = 256,
        parameterisation: str = "x0",
        self_conditioning: bool = True,
        schedule: str = "shifted_cosine",
        schedule_shift: float = 4.0,
    ) -> None:
        super().__init__()
        self.validate_config(dict(parameterisation=parameterisation, schedule=schedule))
        self.in_proj = nn.Linear(2 * latent_dim, dim)  # [z_t, self-conditioning estimate]
        self.ctx_proj = nn.Linear(latent_dim, dim)
        self.type_embed = nn.Embedding(3, dim)  # 0 null, 1 prompt, 2 target
        self.time = TimestepEmbedder(dim)
        self.backbone = Transformer(dim, depth, n_heads, mlp_ratio, cond_dim=dim)
        self.out = nn.Linear(dim, latent_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @staticmethod
    def validate_config(values: dict, where: str = "") -> None:
        """Check the enum settings in ``values`` (constructor arguments); raise ConfigError."""
        for key, choices in (("parameterisation", PARAMETERISATIONS), ("schedule", SCHEDULES)):
            if key in values:
                check_choice(where + key, values[key], choices)

    @property
    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule(self.config.schedule, self.config.schedule_shift)

    def forward(
        self,
        z_t: torch.Tensor,
        t: torch.Tensor,
        prompt: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
        self_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw network output F (b, n, d) for noisy target latents z_t (b, n, d) at times t (b,).

        prompt (b, p, d) clean prompt latents, left-padded; prompt_mask (b, p) 1 = real.
        """
        b, n, d = z_t.shape
        if d != self.config.latent_dim:
            raise InputError(f"latents have width {d}, the denoiser expects {self.config.latent_dim}")
        if n > self.config.max_latents:
            raise InputError(f"{n} target latents exceed the denoiser's maximum of {self.config.max_latents}")
        if self_cond is None:
            self_cond = torch.zeros_like(z_t)
        dtype = self.in_proj.weight.dtype
        x = self.in_proj(torch.cat([z_t, self_cond], -1).to(dtype)) + self.type_embed.weight[2]
        null = self.type_embed.weight[0].expand(b, 1, -1)
        parts, masks = [null], [torch.ones(b, 1, dtype=torch.long, device=z_t.device)]
        if prompt is not None and prompt.shape[1] > 0:
            if prompt_mask is None:
                prompt_mask = torch.ones(prompt.shape[:2], dtype=torch.long, device=z_t.device)
            parts.append(self.ctx_proj(prompt.to(dtype)) + self.type_embed.weight[1])
            masks.append(prompt_mask.long())
        ctx_len = sum(p.shape[1] for p in parts)
        parts.append(x)
        masks.append(torch.ones(b, n, dtype=torch.long, device=z_t.device))
        h = torch.cat(parts, 1)
        mask = torch.cat(masks, 1)
        h, _ = self.backbone(h, attention_mask=mask, cond=self.time(t))
        return self.out(h[:, ctx_len:])

    def predict_x0(self, z_t, t, prompt=None, prompt_mask=None, self_cond=None) -> torch.Tensor:
        """Clean-latent estimate x0_hat (b, n, d), whatever the parameterisation."""
        f = self(z_t, t, prompt, prompt_mask, self_cond).float()
        return self.x0_from_output(f, z_t.float(), t)

    def x0_from_output(self, f: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        p = self.config.parameterisation
        if p == "x0":
            return f
        alpha, sigma = (s.float()[:, None, None] for s in self.schedule.alpha_sigma(t))
        if p == "eps":
            return (z_t - sigma * f) / alpha.clamp_min(1e-4)
        return alpha * z_t - sigma * f  # v-prediction: v = alpha eps - sigma x0
