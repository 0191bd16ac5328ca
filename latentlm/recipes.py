"""Training recipes: how each model kind is configured, fed and exported.

A recipe names the config sections of a kind, builds its model from a
tokenizer and the model section, gives its loss and its batch layout. One
function, :func:`run_training`, turns data paths + a preset into a trained,
exported model through the one training loop.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from latentlm.autoencoder.latent_cache import ChunkLatentCache
from latentlm.autoencoder.losses import AutoencoderLossConfig, autoencoder_loss
from latentlm.autoencoder.modeling_autoencoder import TextAutoencoder, token_texts_of
from latentlm.baselines.autoregressive import CausalLM, ar_loss
from latentlm.baselines.masked_diffusion import MaskedDiffusionLM, mdlm_loss
from latentlm.baselines.parallel_token_prediction import (
    ParallelTokenPredictor,
    PTPLossConfig,
    ptp_loss,
)
from latentlm.baselines.score_entropy_diffusion import (
    ScoreEntropyLM,
    ScoreEntropyLossConfig,
    score_entropy_loss,
)
from latentlm.baselines.uniform_diffusion import UniformDiffusionLM, UniformLossConfig, uniform_loss
from latentlm.config import from_saved, model_section, parse_overrides, resolve_config
from latentlm.data.packing import Layout, PackedBatches, split_documents, tokenize_documents
from latentlm.data.readers import read_documents
from latentlm.data.shards import TokenShards, is_shard_folder, tokenizer_fingerprint
from latentlm.data.tokenizer import (
    DEFAULT_VOCAB_SIZE,
    load_tokenizer,
    sentence_end_ids,
    train_tokenizer,
)
from latentlm.diffusion.decoder_adaptation import (
    DecoderAdaptationConfig,
    decoder_adaptation_loss,
    freeze_encoder,
)
from latentlm.diffusion.losses import (
    TIME_WARP_BINS,
    DenoiserLossConfig,
    denoiser_loss,
    time_density_of,
)
from latentlm.diffusion.modeling_denoiser import LatentDenoiser
from latentlm.errors import CheckpointError, ConfigError, DataError, check_choice
from latentlm.files import move_tree
from latentlm.kinds import KINDS, resolve, trainable_kinds
from latentlm.loading import is_pipeline_folder, load_model, load_pipeline, read_model_config
from latentlm.pipeline_latent_diffusion import (
    SCHEDULERS,
    LatentDiffusionPipeline,
    check_sampling_mode,
    make_scheduler,
)
from latentlm.training import LossFn, TrainConfig, TrainResult, train


@dataclass
class DataConfig:
    """Data section of a preset (``[<kind>.data]``)."""

    seq_len: int = 128
    valid_fraction: float = 0.05  # used when no validation path is given
    vocab_size: int = DEFAULT_VOCAB_SIZE  # when a tokenizer is trained for this run

    def validate(self) -> None:
        if self.seq_len < 2:
            raise ConfigError(f"data.seq_len must be at least 2, got {self.seq_len}")
        if not 0 < self.valid_fraction < 1:
            raise ConfigError(f"data.valid_fraction must be in (0, 1), got {self.valid_fraction}")


@dataclass
class RunContext:
    """What a run brings besides its config sections: the frozen networks it trains against and the
    facts of its data. Each recipe reads the fields its kind needs (``Recipe.needs_*``)."""

    autoencoder: TextAutoencoder | None = None  # denoiser runs: the frozen autoencoder
    teacher: CausalLM | None = None  # PTP runs: the frozen AR that verifies the drafts
    pipeline: LatentDiffusionPipeline | None = None  # decoder adaptation: the trained latent pipeline
    split_cfg: DenoiserLossConfig | None = None  # decoder adaptation: how the pipeline's denoiser split rows
    sentence_ends: torch.Tensor | None = None  # token ids that end a sentence (prompt/continuation splits)
    sampling: dict[str, Any] = dataclasses.field(default_factory=dict)  # saved as the pipeline's defaults
    training_times: dict[str, Any] | None = None  # the denoiser's training-time density, saved with it


@dataclass
class Recipe:
    """How to build, feed and train one model kind.

    ``build_model(cfg, tokenizer, ctx)`` and ``make_loss(cfg, ctx)`` receive the
    resolved sections (``cfg["model"]``, ``cfg["data"]``, any ``extra_sections``)
    and the :class:`RunContext` (the frozen networks the run trains against).
    ``export(model, tokenizer, ctx, folder)`` writes the result.
    """

    kind: str
    model_config: type
    build_model: Callable[[dict[str, Any], Any, RunContext], torch.nn.Module]
    make_loss: Callable[[dict[str, Any], RunContext], LossFn]
    layout: Layout = "stream"
    extra_sections: dict[str, type] = dataclasses.field(default_factory=dict)
    needs_autoencoder: bool = False
    needs_teacher: bool = False
    needs_pipeline: bool = False  # a trained latent pipeline (--pipeline): decoder adaptation
    # the loss draws its shapes per batch (a denoiser's continuation length and split): a step's FLOPs vary
    varying_shapes: bool = False
    export: Callable[[torch.nn.Module, Any, RunContext, Path], None] | None = None

    def schema(self) -> dict[str, type]:
        return {"model": self.model_config, "train": TrainConfig, "data": DataConfig,
                **self.extra_sections}


# Model sections: the model classes' constructor arguments (their defaults are the only ones), less what
# the run supplies from the tokenizer and the data.
_SPECIAL = ("vocab_size", "pad_token_id", "eot_token_id")
ARModelConfig = model_section(CausalLM, "ARModelConfig", exclude=_SPECIAL)
MDLMModelConfig = model_section(MaskedDiffusionLM, "MDLMModelConfig", exclude=(*_SPECIAL, "mask_token_id"))
DuoModelConfig = model_section(UniformDiffusionLM, "DuoModelConfig", exclude=_SPECIAL)
SEDDModelConfig = model_section(ScoreEntropyLM, "SEDDModelConfig", exclude=(*_SPECIAL, "loss_steps"))
AutoencoderConfig = model_section(TextAutoencoder, "AutoencoderConfig",
                                  exclude=(*_SPECIAL, "max_seq_len", "token_texts"))


def _check_sampling(section) -> None:
    """The pipeline's sampling settings, checked here rather than at export after the run."""
    check_choice("model.sampler", section.sampler, tuple(SCHEDULERS))
    check_sampling_mode(section.sampling_mode, section.window_blocks, section.block_size)


# saved with the pipeline, the defaults of its __call__: the scheduler (DDPM beat DDIM at every step count
# on synthetic stories and at 3 of 4 on TinyStories, docs/latent_diffusion.md), the sampling mode and
# the blocks in flight of staggered mode
SAMPLING_FIELDS = (("sampler", str, "ddpm"), ("sampling_mode", str, "parallel"), ("window_blocks", int, 4))
DenoiserConfig = model_section(LatentDenoiser, "DenoiserConfig", exclude=("latent_dim", "max_latents"),
                               extra=SAMPLING_FIELDS, check_extra=_check_sampling)


def _build_lm(cls, cfg: dict[str, Any], tok, **special) -> torch.nn.Module:
    """A baseline of class ``cls`` from its model section and the tokenizer."""
    m = dataclasses.asdict(cfg["model"])
    m["max_seq_len"] = max(m["max_seq_len"], cfg["data"].seq_len)
    return cls(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eot_token_id=tok.eos_token_id, **special, **m)


def ar_recipe() -> Recipe:
    return Recipe("ar", ARModelConfig, lambda cfg, tok, ctx: _build_lm(CausalLM, cfg, tok), lambda cfg, ctx: ar_loss)


def autoencoder_recipe() -> Recipe:
    def build(cfg: dict[str, Any], tok, ctx) -> torch.nn.Module:
        m = cfg["model"]
        semantic = m.encoder_type == "semantic"
        model = TextAutoencoder(vocab_size=len(tok), max_seq_len=cfg["data"].seq_len,
                                pad_token_id=tok.pad_token_id, eot_token_id=tok.eos_token_id,
                                token_texts=token_texts_of(tok) if semantic else None,
                                **dataclasses.asdict(m))
        if semantic:
            model.semantic.load_pretrained_weights()
        return model

    return Recipe("autoencoder", AutoencoderConfig, build,
                  lambda cfg, ctx: functools.partial(autoencoder_loss, cfg=cfg["loss"]),
                  layout="document", extra_sections={"loss": AutoencoderLossConfig})


def mdlm_recipe() -> Recipe:
    return Recipe("mdlm", MDLMModelConfig,
                  lambda cfg, tok, ctx: _build_lm(MaskedDiffusionLM, cfg, tok, mask_token_id=tok.mask_token_id),
                  lambda cfg, ctx: mdlm_loss)


def sedd_recipe() -> Recipe:
    """Score-entropy diffusion with uniform transitions (baselines/score_entropy_diffusion.py) on the AR's
    data layout."""
    return Recipe("sedd", SEDDModelConfig, lambda cfg, tok, ctx: _build_lm(ScoreEntropyLM, cfg, tok),
                  lambda cfg, ctx: functools.partial(score_entropy_loss, cfg=cfg["loss"]),
                  extra_sections={"loss": ScoreEntropyLossConfig})


def duo_recipe() -> Recipe:
    """Uniform-state token diffusion (baselines/uniform_diffusion.py) on the AR's data layout."""
    return Recipe("duo", DuoModelConfig, lambda cfg, tok, ctx: _build_lm(UniformDiffusionLM, cfg, tok),
                  lambda cfg, ctx: functools.partial(uniform_loss, cfg=cfg["loss"]),
                  extra_sections={"loss": UniformLossConfig})


@dataclass
class ExpertsConfig:
    """Two time experts (``[denoiser.experts]``), as in diffusers' ``WanPipeline``: with a ``boundary``
    the run trains the preset's denoiser, which samples at times t >= boundary, then a second one with
    the ``low_noise`` overrides of the preset (e.g. ``["loss.time_mean=-0.5"]``: lower training times),
    which samples below it; both go into one pipeline (``denoiser`` and ``denoiser_2``)."""

    boundary: float | None = None  # None: one denoiser for every time
    low_noise: list[str] = dataclasses.field(default_factory=list)

    def validate(self) -> None:
        if self.boundary is not None and not 0 < self.boundary < 1:
            raise ConfigError(f"experts.boundary must be a time in (0, 1), got {self.boundary}")
        if "experts" in parse_overrides(self.low_noise):
            raise ConfigError("experts.low_noise overrides the low-noise denoiser's model, loss, train and data "
                              "sections, not the experts section")


def denoiser_recipe() -> Recipe:
    def build(cfg: dict[str, Any], tok, ctx) -> torch.nn.Module:
        ae = ctx.autoencoder
        sampling = {name for name, _, _ in SAMPLING_FIELDS}
        fields = {k: v for k, v in dataclasses.asdict(cfg["model"]).items() if k not in sampling}
        # before training, not at export: the window must fit the autoencoder's latents
        check_sampling_mode(cfg["model"].sampling_mode, cfg["model"].window_blocks, fields["block_size"], ae.n_latents)
        if cfg["loss"].time_sampling == "learned":  # the learned time density lives in the denoiser
            fields["time_warp_bins"] = fields["time_warp_bins"] or TIME_WARP_BINS
        return LatentDenoiser(latent_dim=ae.config.latent_dim, max_latents=ae.n_latents, **fields)

    def export(model, tok, ctx, folder: Path) -> None:
        times = ctx.training_times
        if times and times["sampling"] == "learned" and model.time_warp is not None:  # the density it learned
            times = {**times, "bins": model.time_warp.density().tolist()}
        pipe = LatentDiffusionPipeline(tok, ctx.autoencoder, model, make_scheduler(ctx.sampling["sampler"], model),
                                       sampling_mode=ctx.sampling["sampling_mode"],
                                       window_blocks=ctx.sampling["window_blocks"],
                                       training_times=times)
        pipe.save_pretrained(folder)

    def make_loss(cfg: dict[str, Any], ctx: RunContext) -> LossFn:
        ae = ctx.autoencoder
        cache = None
        if cfg["loss"].cache_latents and getattr(ae.config, "encoder_context", "sequence") == "chunk":
            cache = ChunkLatentCache(ae)
        return functools.partial(denoiser_loss, autoencoder=ae, cfg=cfg["loss"],
                                 sentence_ends=ctx.sentence_ends, latent_cache=cache)

    return Recipe("denoiser", DenoiserConfig, build, make_loss,
                  layout="document", extra_sections={"loss": DenoiserLossConfig, "experts": ExpertsConfig},
                  needs_autoencoder=True, varying_shapes=True, export=export)


def judge_recipe() -> Recipe:
    """The judge of ``compare``: an AR model with its own preset section (larger than the baseline AR)."""
    return dataclasses.replace(ar_recipe(), kind="judge")


@dataclass
class PTPModelConfig:
    """Model section of a PTP run (``[ptp.model]``): the architecture is the teacher's."""

    draft_tokens: int = 16  # future tokens one call predicts; decoding may draft fewer
    u_bits: int = 24  # binary digits of u the embedding sees

    def validate(self) -> None:
        if self.draft_tokens < 1:
            raise ConfigError(f"model.draft_tokens must be at least 1, got {self.draft_tokens}")
        if not 1 <= self.u_bits <= 52:
            raise ConfigError(f"model.u_bits must be in [1, 52], got {self.u_bits}")


def ptp_recipe() -> Recipe:
    """Parallel Token Prediction: a predictor distilled from a trained AR (``--teacher``), initialised
    from its weights; the export holds the predictor and, in ``teacher/``, the AR that verifies it."""

    def build(cfg: dict[str, Any], tok, ctx) -> torch.nn.Module:
        m, teacher = cfg["model"], ctx.teacher
        if cfg["data"].seq_len > teacher.config.max_seq_len:
            raise ConfigError(f"data.seq_len {cfg['data'].seq_len} exceeds the teacher's context of "
                              f"{teacher.config.max_seq_len} tokens")
        window = cfg["data"].seq_len + m.draft_tokens  # the furthest position training reaches
        return ParallelTokenPredictor.from_teacher(teacher, draft_tokens=m.draft_tokens, u_bits=m.u_bits,
                                                   max_seq_len=window)

    def export(model, tok, ctx, folder: Path) -> None:
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        ctx.teacher.save_pretrained(folder / "teacher")
        tok.save_pretrained(folder / "teacher")

    return Recipe("ptp", PTPModelConfig, build,
                  lambda cfg, ctx: functools.partial(ptp_loss, teacher=ctx.teacher, cfg=cfg["loss"]),
                  extra_sections={"loss": PTPLossConfig}, needs_teacher=True, export=export)


@dataclass
class DecoderModelConfig:
    """Model section of a decoder adaptation run (``[decoder.model]``): none; the architecture is the
    pipeline's autoencoder."""


def decoder_recipe() -> Recipe:
    """Decoder adaptation (diffusion/decoder_adaptation.py): the pipeline's autoencoder with only its
    decoder side trainable, on the frozen denoiser's clean estimates; the export is the whole pipeline
    with the adapted autoencoder."""
    def build(cfg: dict[str, Any], tok, ctx) -> torch.nn.Module:
        ae = copy.deepcopy(ctx.pipeline.autoencoder)
        freeze_encoder(ae)
        return ae

    def make_loss(cfg: dict[str, Any], ctx: RunContext) -> LossFn:
        return functools.partial(decoder_adaptation_loss, denoiser=ctx.pipeline.denoiser, cfg=cfg["loss"],
                                 split_cfg=ctx.split_cfg, sentence_ends=ctx.sentence_ends)

    def export(model, tok, ctx, folder: Path) -> None:
        pipe = ctx.pipeline
        adapted = LatentDiffusionPipeline(tok, model.eval(), pipe.denoiser, pipe.scheduler,
                                          denoiser_2=pipe.denoiser_2, boundary=pipe.config.boundary,
                                          sampling_mode=pipe.config.sampling_mode,
                                          window_blocks=pipe.config.window_blocks,
                                          training_times=pipe.config.training_times)
        adapted.save_pretrained(folder)

    return Recipe("decoder", DecoderModelConfig, build, make_loss, layout="document",
                  extra_sections={"loss": DecoderAdaptationConfig}, needs_pipeline=True, varying_shapes=True,
                  export=export)


def row_length(recipe: Recipe, cfg: dict[str, Any], ctx: RunContext) -> int:
    """Tokens per training row of a run: ``data.seq_len``, except on a frozen latent model (a denoiser's
    autoencoder, an adapted decoder's pipeline), whose rows are ``loss.row_lengths`` autoencoder lengths:
    a prompt of up to ``max_seq_len`` tokens followed by a continuation of up to ``max_seq_len`` (2), or
    one length split at a random token (1): the most the pipeline takes and samples."""
    if recipe.needs_autoencoder and ctx.autoencoder is not None:
        return cfg["loss"].row_lengths * ctx.autoencoder.config.max_seq_len
    if recipe.needs_pipeline and ctx.pipeline is not None and ctx.split_cfg is not None:
        return ctx.split_cfg.row_lengths * ctx.pipeline.autoencoder.config.max_seq_len
    return cfg["data"].seq_len


def get_recipe(kind: str) -> Recipe:
    """The training recipe of ``kind``, as the registry (:mod:`latentlm.kinds`) names it."""
    entry = KINDS.get(kind)
    if entry is None or entry.recipe is None:
        raise ConfigError(f"unknown model kind {kind!r}; trainable: "
                          f"{', '.join(sorted(k.name for k in trainable_kinds()))}")
    return resolve(entry.recipe)()


def resolve_run_config(
    kind: str, preset: str | None = None, config_file: str | None = None,
    overrides: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The ``model`` / ``train`` / ``data`` sections of a run of ``kind``."""
    return resolve_config(kind, get_recipe(kind).schema(), preset=preset, config_file=config_file,
                          overrides=list(overrides or []))


def run_training(
    kind: str,
    data: Sequence[str | Path],
    out_dir: str | Path,
    *,
    preset: str | None = None,
    config_file: str | None = None,
    overrides: Sequence[str] | None = None,
    valid: Sequence[str | Path] | None = None,
    tokenizer: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    autoencoder: str | Path | None = None,
    init_from: str | Path | None = None,
    teacher: str | Path | None = None,
    pipeline: str | Path | None = None,
) -> TrainResult:
    """Train a model of ``kind`` on text files/folders ``data`` and export it to ``out_dir``.

    The exported folder holds the model (``config.json`` + safetensors) and its
    tokenizer. Without ``tokenizer`` a byte-level BPE is trained on ``data``.
    A denoiser run needs ``autoencoder`` (a trained autoencoder folder): its
    tokenizer and maximum length are used, and the export is a complete
    :class:`~latentlm.LatentDiffusionPipeline` folder. With two time experts
    (``experts.boundary``) the two denoisers train one after the other in
    ``out_dir/high_noise`` and ``out_dir/low_noise`` (each resumable), and
    ``out_dir`` gets the pipeline of both.

    ``init_from`` (fine-tuning) starts from the weights of a trained model of the
    same kind and architecture (its exported folder; for a denoiser also its
    pipeline folder) with a fresh optimizer, learning-rate schedule and step
    count; its tokenizer is used. Checkpoints already in ``out_dir`` take
    precedence (resume).

    A ``ptp`` run distils a trained AR, ``teacher`` (its folder): the predictor
    starts from its weights and uses its tokenizer.

    A ``decoder`` run adapts the decoder of a trained latent ``pipeline`` (its folder) to its
    denoiser's clean estimates and exports the pipeline with the adapted autoencoder.
    """
    cfg = resolve_run_config(kind, preset, config_file, overrides)
    kwargs = dict(valid=valid, tokenizer=tokenizer, resume=resume, progress=progress, autoencoder=autoencoder,
                  teacher=teacher, pipeline=pipeline)
    origin = {"preset": preset, "config_file": config_file, "overrides": list(overrides or [])}
    experts = cfg.get("experts")
    if experts is None or experts.boundary is None:
        return _train_run(kind, cfg, data, out_dir, origin=origin, init_from=init_from, **kwargs)
    if init_from is not None:
        raise ConfigError("--init-from with two time experts (experts.boundary) is not supported: fine-tune "
                          "each expert as a one-denoiser run")
    # two time experts: each a complete, resumable run in its own subfolder, then one pipeline of both
    out_dir = Path(out_dir)
    low_origin = {**origin, "overrides": [*origin["overrides"], *experts.low_noise]}
    low_cfg = resolve_run_config(kind, preset, config_file, low_origin["overrides"])
    runs = []
    for name, run_cfg, run_origin in (("high_noise", cfg, origin), ("low_noise", low_cfg, low_origin)):
        run = _train_run(kind, run_cfg, data, out_dir / name, origin=run_origin, **kwargs)
        if run.interrupted:
            return dataclasses.replace(run, out_dir=out_dir)
        runs.append(run)
    _export_time_experts(out_dir, experts.boundary)
    return dataclasses.replace(runs[-1], out_dir=out_dir, history=runs[0].history + runs[1].history)


def _export_time_experts(out_dir: Path, boundary: float) -> None:
    """One pipeline of the two experts' exports (``high_noise/``, ``low_noise/``) in ``out_dir``."""
    high, low = load_pipeline(out_dir / "high_noise"), load_pipeline(out_dir / "low_noise")
    pipe = LatentDiffusionPipeline(high.tokenizer, high.autoencoder, high.denoiser, high.scheduler,
                                   denoiser_2=low.denoiser, boundary=boundary, sampling_mode=high.config.sampling_mode,
                                   window_blocks=high.config.window_blocks, training_times=None)  # two densities
    tmp = out_dir / ".export-tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp)
    move_tree(tmp, out_dir)


def _train_run(kind: str, cfg: dict[str, Any], data: Sequence[str | Path], out_dir: str | Path, *,
               origin: dict[str, Any], valid: Sequence[str | Path] | None, tokenizer: str | Path | None, resume: bool, progress: bool,
               autoencoder: str | Path | None, init_from: str | Path | None = None,
               teacher: str | Path | None = None, pipeline: str | Path | None = None) -> TrainResult:
    """One training run of ``kind`` with the resolved sections ``cfg`` (see :func:`run_training`);
    ``origin``: the preset, config file and overrides they came from (saved with the run)."""
    recipe = get_recipe(kind)
    train_cfg: TrainConfig = cfg["train"]
    data_cfg: DataConfig = cfg["data"]
    ctx = RunContext()
    if recipe.needs_autoencoder:
        if autoencoder is None:
            raise ConfigError(f"training a {kind} needs --autoencoder DIR (a trained autoencoder)")
        ae = load_model(autoencoder)
        if type(ae).__name__ != "TextAutoencoder":
            raise ConfigError(f"{autoencoder} holds a {type(ae).__name__}, not a TextAutoencoder")
        ae.requires_grad_(False).eval()
        ctx = RunContext(autoencoder=ae, training_times=time_density_of(cfg["loss"]),
                         sampling={name: getattr(cfg["model"], name) for name, _, _ in SAMPLING_FIELDS})
        tokenizer = autoencoder
    elif recipe.needs_pipeline:
        if pipeline is None or not is_pipeline_folder(pipeline):
            raise ConfigError(f"training a {kind} needs --pipeline DIR (a trained latent pipeline: "
                              f"latentlm train denoiser), got {pipeline!r}")
        pipe = load_pipeline(pipeline)
        pipe.denoiser.requires_grad_(False).eval()
        split_cfg = _saved_denoiser_loss(Path(pipeline))
        ctx = RunContext(pipeline=pipe, split_cfg=split_cfg)
        tokenizer = Path(pipeline) / "tokenizer"
    elif teacher is not None and not recipe.needs_teacher:
        raise ConfigError(f"--teacher is for PTP runs (latentlm train ptp), not for a {kind}")
    if pipeline is not None and not recipe.needs_pipeline:
        raise ConfigError(f"--pipeline is for decoder adaptation (latentlm train decoder), not for a {kind}")
    rows = row_length(recipe, cfg, ctx)
    if rows != data_cfg.seq_len and data_cfg.seq_len != DataConfig.seq_len:  # set by the user, not the default
        source = ("its pipeline's denoiser rows" if recipe.needs_pipeline else
                  "loss.row_lengths autoencoder lengths (set loss.row_lengths to 1 or 2 instead)")
        raise ConfigError(f"data.seq_len = {data_cfg.seq_len} does not apply to a {kind} run: its rows are "
                          f"{source}, {rows} tokens here; remove data.seq_len")
    data_cfg = dataclasses.replace(data_cfg, seq_len=rows)
    cfg = {**cfg, "data": data_cfg}  # run_config.json records the rows the run trains on
    if recipe.needs_teacher:
        ctx.teacher = _load_teacher(teacher, tokenizer)
        tokenizer = teacher
    shards, valid_shards = _shard_folder(data, "--data"), _shard_folder(valid or [], "--valid")
    docs = valid_docs = None
    if shards is not None:
        tokenizer = tokenizer or shards.folder / "tokenizer"
    else:
        docs = read_documents(list(data))
    if valid and valid_shards is None:
        valid_docs = read_documents(list(valid))
    elif not valid and shards is not None:
        raise ConfigError("training on token shards needs --valid (text files or a shard folder of held-out text)")
    elif not valid:
        docs, valid_docs = split_documents(docs, data_cfg.valid_fraction, seed=train_cfg.seed)
    if init_from is not None:
        if not str(init_from).strip() or not Path(init_from).is_dir():
            raise ConfigError(f"--init-from {str(init_from)!r} does not exist: pass the folder of a trained {kind}")
        init_from = Path(init_from)
        read_model_config(init_from / "denoiser" if is_pipeline_folder(init_from) else init_from)  # a model folder
        if not recipe.needs_autoencoder:
            tokenizer = _init_tokenizer(init_from, tokenizer)
    tok = load_tokenizer(tokenizer) if tokenizer else train_tokenizer(docs, data_cfg.vocab_size)
    if recipe.needs_autoencoder or recipe.needs_pipeline:
        ctx.sentence_ends = torch.tensor(sentence_end_ids(tok))
    for source in (shards, valid_shards):
        if source is not None and source.manifest["tokenizer_sha256"] != tokenizer_fingerprint(tok):
            raise DataError(f"the shards in {source.folder} were made with another tokenizer than this run's "
                            f"({tokenizer}); tokenize the text again with it (latentlm data tokenize)")
    train_ids = shards if shards is not None else tokenize_documents(docs, tok)
    valid_ids = valid_shards if valid_shards is not None else tokenize_documents(valid_docs, tok)
    common = dict(seq_len=data_cfg.seq_len, eot_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                  layout=recipe.layout)
    batches = PackedBatches(train_ids, batch_size=train_cfg.batch_size, seed=train_cfg.seed, **common)
    try:
        valid_batches = PackedBatches(valid_ids, batch_size=train_cfg.batch_size, seed=0,
                                      **common).sequential_batches(train_cfg.eval_batches)
    except DataError:
        valid_batches = []
    torch.manual_seed(train_cfg.seed)
    model = recipe.build_model(cfg, tok, ctx)
    if init_from is not None:
        load_initial_weights(model, kind, init_from, autoencoder=ctx.autoencoder)

    def export(m: torch.nn.Module, folder: Path) -> None:
        if recipe.export is not None:
            recipe.export(m, tok, ctx, folder)
            return
        m.save_pretrained(folder)  # type: ignore[operator]
        tok.save_pretrained(folder)

    run_config = {"kind": kind, **origin, "init_from": str(init_from) if init_from else None,
                  **{k: dataclasses.asdict(v) for k, v in cfg.items()}}
    if ctx.split_cfg is not None:  # how the adapted pipeline's denoiser splits rows (its cost reads it)
        run_config["denoiser_loss"] = dataclasses.asdict(ctx.split_cfg)
    return train(model, recipe.make_loss(cfg, ctx), batches, train_cfg, out_dir, valid_batches=valid_batches,
                 resume=resume, export=export, run_config=run_config, progress=progress)


def _saved_denoiser_loss(pipeline: Path) -> DenoiserLossConfig:
    """The loss section the pipeline's denoiser trained with (its run_config.json; an adapted pipeline's
    records it as ``denoiser_loss``), for splitting documents the same way; the defaults when the folder
    has none."""
    where = pipeline / "run_config.json"
    try:
        saved = json.loads(where.read_text())
    except OSError:
        return DenoiserLossConfig()  # a pipeline trained elsewhere
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{where} is not valid JSON ({err}); train the pipeline again or restore it") from None
    section = "denoiser_loss" if isinstance(saved, dict) and "denoiser_loss" in saved else "loss"  # adapted: its own
    if not isinstance(saved, dict) or section not in saved:
        return DenoiserLossConfig()
    return from_saved(DenoiserLossConfig, saved[section], f"{where} [{section}]")


def _shard_folder(paths: Sequence[str | Path], flag: str) -> TokenShards | None:
    """The token shards named by ``paths`` (one shard folder), or None for text files."""
    folders = [Path(p) for p in paths if is_shard_folder(p)]
    if not folders:
        return None
    if len(paths) > 1:
        raise ConfigError(f"{flag} takes one shard folder or text files, not both or several folders: "
                          f"tokenize them into one folder (latentlm data tokenize --data ...)")
    return TokenShards(folders[0])


def _load_teacher(teacher: str | Path | None, tokenizer: str | Path | None) -> CausalLM:
    """The frozen AR a PTP run distils, with its tokenizer as the run's."""
    if teacher is None:
        raise ConfigError("training a ptp model needs --teacher DIR (a trained AR: latentlm train ar)")
    if not Path(teacher).is_dir():
        raise ConfigError(f"--teacher {teacher} does not exist: pass the folder of a trained AR")
    cls = read_model_config(teacher)["_class_name"]
    if cls != "CausalLM":
        raise ConfigError(f"--teacher {teacher} holds a {cls}, not an AR model (CausalLM)"
                          + ("; a PTP model is distilled from its AR, not from another PTP model"
                             if cls == "ParallelTokenPredictor" else ""))
    if tokenizer is not None and load_tokenizer(tokenizer).get_vocab() != load_tokenizer(teacher).get_vocab():
        raise ConfigError(f"--tokenizer {tokenizer} is not the tokenizer of the teacher {teacher}: drop "
                          "--tokenizer (the teacher's is used)")
    model = load_model(teacher)
    return model.requires_grad_(False).eval()


def _init_tokenizer(init_from: Path, tokenizer: str | Path | None) -> Path:
    """The tokenizer of a fine-tuning run: the starting model's (another one would remap its ids)."""
    if tokenizer is not None and load_tokenizer(tokenizer).get_vocab() != load_tokenizer(init_from).get_vocab():
        raise ConfigError(f"--tokenizer {tokenizer} is not the tokenizer of {init_from}, the model this run "
                          "starts from: drop --tokenizer (its own is used)")
    return init_from


def load_initial_weights(model: torch.nn.Module, kind: str, folder: str | Path, *,
                         autoencoder: torch.nn.Module | None = None) -> None:
    """Copy the weights of the trained model in ``folder`` into the freshly built ``model``.

    Raises ConfigError when ``folder`` holds another kind or architecture, or (denoiser
    pipelines) was trained on another autoencoder; warns when a setting of the model
    section differs from the one the weights were trained with (e.g. the noise schedule).
    """
    folder = Path(folder)
    pipeline = is_pipeline_folder(folder)
    source = load_model(folder / "denoiser" if pipeline else folder)
    if type(source) is not type(model):
        raise ConfigError(f"{folder} holds a {type(source).__name__}; a {kind} run starts from a "
                          f"{type(model).__name__}")
    theirs, ours = source.state_dict(), model.state_dict()
    wrong = [f"{k} {tuple(theirs[k].shape) if k in theirs else 'missing'} (this run: {tuple(v.shape)})"
             for k, v in ours.items() if k not in theirs or theirs[k].shape != v.shape]
    if wrong or set(theirs) - set(ours):
        raise ConfigError(f"the {kind} in {folder} has another architecture than this run's model section "
                          f"({'; '.join(wrong[:3]) or 'extra weights'}): set model.* as in its config.json")
    if pipeline and autoencoder is not None:
        used = load_model(folder / "autoencoder").state_dict()
        if any(k not in used or used[k].shape != v.shape or not torch.equal(v, used[k])
               for k, v in autoencoder.state_dict().items()):
            raise ConfigError(f"the denoiser in {folder} was trained on another autoencoder than --autoencoder: "
                              f"its latents mean something else; pass --autoencoder {folder / 'autoencoder'}")
    changed = {k: (v, model.config[k]) for k, v in source.config.items()
               if not k.startswith("_") and k in model.config and model.config[k] != v}
    if changed:
        warnings.warn(f"fine-tuning {folder} with other model settings (trained with -> now): "
                      + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()), stacklevel=2)
    model.load_state_dict(theirs)
