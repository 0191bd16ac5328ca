"""What a training run costs: parameters and training FLOPs per token, counted rather than estimated.

    cost = preset_costs("cpu-small", vocab_size=4096)["denoiser"]
    cost.flops_per_token, cost.total_flops

FLOPs are counted by ``torch.utils.flop_counter`` (:func:`latentlm.flops.flop_counter`: attention on
the CPU too, and without computing the products it counts) on one training step of one row at the
run's shapes (random weights and tokens: the count depends on shapes only; the mean of :data:`SHAPE_DRAWS` steps for a
loss that draws its shapes, such as a denoiser's continuation length): the loss's forward, its backward, and the
forward of every frozen network it calls (a denoiser's autoencoder encoding its batch; with a chunk-local
autoencoder's latent cache, ``loss.cache_latents``, every encoding is counted as computed: an upper
bound, since the cache's hits skip the encoder). Matrix
multiplications and attention are counted, elementwise work is not. Per token means per text token of
the batch (the rows the run trains on: ``data.seq_len``, or ``loss.row_lengths`` autoencoder lengths for a
denoiser, :func:`latentlm.recipes.row_length`), for every kind, so an AR and a latent model are counted
in one unit.
Sampling FLOPs are counted with the same counter by ``compare``'s speed section (computing: a sampler
stops on what it draws).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from latentlm.config import from_saved
from latentlm.data.tokenizer import load_tokenizer
from latentlm.diffusion.losses import DenoiserLossConfig
from latentlm.errors import CheckpointError
from latentlm.flops import flop_counter
from latentlm.loading import is_pipeline_folder, load_model, load_pipeline
from latentlm.recipes import RunContext, get_recipe, resolve_run_config, row_length

# the kinds a preset trains for the comparison; the latent model is autoencoder + denoiser
PRESET_KINDS = ("ar", "mdlm", "duo", "sedd", "autoencoder", "denoiser")
# steps counted for a loss whose shapes vary (Recipe.varying_shapes): the cpu-small denoiser's step ranges
# over 0.6-1.4x its mean, so 16 draws put the mean within about 5%
SHAPE_DRAWS = 16


@dataclass(frozen=True)
class TrainingCost:
    """Parameters and training compute of one run."""

    kind: str
    trained_params: int  # updated by the run
    frozen_params: int  # used by every step, not updated (a denoiser's autoencoder)
    flops_per_token: float  # forward + backward of one training step, per text token of its batch
    tokens: int  # text tokens the run trains on: steps x batch_size x grad_accum x seq_len

    @property
    def total_flops(self) -> float:
        return self.flops_per_token * self.tokens


class _SizeOnly:
    """What ``build_model`` reads from a tokenizer, for a model of ``n`` tokens built without one."""

    pad_token_id, eos_token_id, mask_token_id = 0, 1, 2

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def _special_ids(tok) -> set[int]:
    return {i for i in (getattr(tok, a, None) for a in ("pad_token_id", "eos_token_id", "mask_token_id",
                                                        "bos_token_id")) if i is not None}


def count_training_flops(model: torch.nn.Module, loss_fn, seq_len: int, vocab_size: int,
                         special_ids: set[int] = frozenset(), seed: int = 0) -> int:
    """FLOPs of one training step (forward + backward) of ``loss_fn(model, batch)`` on one row of
    ``seq_len`` tokens drawn from the non-special ids, counted on shapes only
    (:func:`latentlm.flops.flop_counter`). Leaves the model's gradients and the global random state as
    they were."""
    ordinary = torch.tensor([i for i in range(vocab_size) if i not in special_ids])
    g = torch.Generator().manual_seed(seed)
    ids = ordinary[torch.randint(len(ordinary), (1, seq_len), generator=g)]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    was_training = model.training
    model.train()
    with torch.random.fork_rng(devices=[]), flop_counter(shapes_only=True) as counter:
        torch.manual_seed(seed)
        loss_fn(model, batch).loss.backward()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return counter.get_total_flops()


def training_cost(kind: str, cfg: dict[str, Any], tokenizer, ctx: RunContext | None = None,
                  seed: int = 0) -> TrainingCost:
    """The cost of a run of ``kind`` with the resolved sections ``cfg`` (:func:`resolve_run_config`);
    ``tokenizer``: the run's, or anything with ``len()`` and the special ids; ``ctx``: the frozen
    networks the run uses (``RunContext(autoencoder=...)`` for a denoiser)."""
    recipe = get_recipe(kind)
    ctx = ctx or RunContext()
    if recipe.needs_autoencoder and ctx.autoencoder is None:
        raise CheckpointError(f"the cost of a {kind} run needs the autoencoder it trains on")
    if recipe.needs_teacher and ctx.teacher is None:
        raise CheckpointError(f"the cost of a {kind} run needs the AR it distils (RunContext(teacher=...))")
    if recipe.needs_pipeline and (ctx.pipeline is None or ctx.split_cfg is None):
        raise CheckpointError(f"the cost of a {kind} run needs the pipeline it adapts and its denoiser's loss section")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = recipe.build_model(cfg, tokenizer, ctx)
    nets = (ctx.autoencoder, ctx.teacher, *((ctx.pipeline.denoiser, ctx.pipeline.denoiser_2) if ctx.pipeline else ()))
    frozen = sum(p.numel() for net in nets if net is not None for p in net.parameters())
    frozen += sum(p.numel() for p in model.parameters() if not p.requires_grad)  # an adapted decoder's encoder
    seq_len, train = row_length(recipe, cfg, ctx), cfg["train"]
    draws = SHAPE_DRAWS if recipe.varying_shapes else 1  # each with a fresh loss: no latent cached by another
    flops = sum(count_training_flops(model, recipe.make_loss(cfg, ctx), seq_len, len(tokenizer),
                                     _special_ids(tokenizer), seed + i) for i in range(draws)) / draws
    return TrainingCost(kind, sum(p.numel() for p in model.parameters() if p.requires_grad), frozen, flops / seq_len,
                        train.steps * train.batch_size * train.grad_accum * seq_len)


def preset_costs(preset: str, vocab_size: int, overrides: dict[str, list[str]] | None = None
                 ) -> dict[str, TrainingCost]:
    """The cost of every model the preset trains for the comparison (:data:`PRESET_KINDS`), at a
    vocabulary of ``vocab_size`` tokens; ``overrides``: kind -> ``SECTION.KEY=VALUE`` strings."""
    overrides = overrides or {}
    tok = _SizeOnly(vocab_size)
    costs: dict[str, TrainingCost] = {}
    ctx = RunContext()
    for kind in PRESET_KINDS:
        cfg = resolve_run_config(kind, preset, overrides=overrides.get(kind))
        if kind == "denoiser":
            ae_cfg = resolve_run_config("autoencoder", preset, overrides=overrides.get("autoencoder"))
            ctx.autoencoder = get_recipe("autoencoder").build_model(ae_cfg, tok, RunContext()).requires_grad_(False)
        costs[kind] = training_cost(kind, cfg, tok, ctx)
    return costs


def run_cost(folder: str | Path) -> TrainingCost | None:
    """The cost of the run that trained ``folder``, from its ``run_config.json`` (None when the folder
    has none: a model trained elsewhere). A pipeline's denoiser is counted with the pipeline's
    autoencoder, an adapted decoder with the pipeline's denoiser making its estimates, a PTP predictor
    with the AR that teaches it (frozen: its forward is counted, its parameters are not trained)."""
    folder = Path(folder)
    try:
        saved = json.loads((folder / "run_config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    kind = saved.get("kind") if isinstance(saved, dict) else None
    if kind not in (*PRESET_KINDS, "judge", "decoder", "ptp"):
        return None
    recipe = get_recipe(kind)
    cfg = {}
    for name, cls in recipe.schema().items():
        cfg[name] = from_saved(cls, saved.get(name, {}), f"{folder}/run_config.json [{name}]")
    pipeline = is_pipeline_folder(folder)
    tokenizer = load_tokenizer(folder / "tokenizer" if pipeline else folder)
    ctx = RunContext()
    if recipe.needs_autoencoder:
        if not pipeline:
            raise CheckpointError(f"{folder}: a {kind} run's folder must be its pipeline (with its autoencoder)")
        ctx.autoencoder = load_model(folder / "autoencoder").requires_grad_(False)
    if recipe.needs_teacher:  # the export keeps the AR its drafts are verified by
        if not (folder / "teacher").is_dir():
            raise CheckpointError(f"{folder}: a ptp run's folder holds its teacher in teacher/; it is missing")
        ctx.teacher = load_model(folder / "teacher").requires_grad_(False).eval()
    if recipe.needs_pipeline:
        if not pipeline or "denoiser_loss" not in saved:
            return None  # adapted before its run recorded how the denoiser split rows
        ctx.pipeline = load_pipeline(folder)
        ctx.split_cfg = from_saved(DenoiserLossConfig, saved["denoiser_loss"],
                                   f"{folder}/run_config.json [denoiser_loss]")
    return training_cost(kind, cfg, tokenizer, ctx)


def cost_record(cost: TrainingCost) -> dict[str, Any]:
    return {**dataclasses.asdict(cost), "total_flops": cost.total_flops}
