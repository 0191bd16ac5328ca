"""Every model kind declared once: what trains it, what it saves, what generates with it and which
generation options it takes. The trainer (``latentlm train KIND``), the loaders, the evaluation adapters,
``compare`` and the command line all read this registry; a new kind is one module (its model, recipe
and adapter) plus one :func:`register_kind` call.

Importable without torch: implementations are named ``"module:attribute"`` and imported on first use
(:func:`resolve`), so ``latentlm --help`` builds every flag from here in a fraction of a second.

The generation options share one vocabulary (:data:`GENERATION_OPTIONS`): the same name in the
pipeline, the adapters' ``generate``, ``latentlm generate --flag`` and ``compare --option KIND.name=``.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentlm.choices import MDLM_DECODERS, SAMPLING_MODES, SCHEDULER_NAMES, UNIFORM_DECODERS
from latentlm.errors import CheckpointError, InputError


@dataclass(frozen=True)
class GenerationOption:
    """One generation option: its name everywhere (the CLI flag is ``--`` + name with hyphens), type,
    default, help, allowed values, and ``nargs`` for a tuple value."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None = None
    nargs: int | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


GENERATION_OPTIONS: dict[str, GenerationOption] = {o.name: o for o in (
    GenerationOption("num_inference_steps", int, 32, "denoising steps (network calls without guidance)"),
    GenerationOption("temperature", float, 1.0, "temperature of the token distribution (0: most likely token)"),
    GenerationOption("top_p", float, 1.0, "nucleus sampling: the smallest set of tokens holding this probability"),
    GenerationOption("draft_tokens", int, 0, "tokens drafted per call (0: as many as the model was trained for)"),
    GenerationOption("decoder", str, "ancestral", "the token-diffusion decoder (mdlm: ancestral, llada, threshold, "
                     "anchor; duo: ancestral, psi)", choices=tuple(dict.fromkeys(MDLM_DECODERS + UNIFORM_DECODERS))),
    GenerationOption("corrector", float, 0.5, "the Psi-sampler's corrector strength 1 - kappa in [0, 1] "
                     "(0: ancestral)"),
    GenerationOption("corrector_interval", float, (0.0, 1.0), "apply the Psi corrector only at times in "
                     "[T_LO, T_HI]", nargs=2),
    GenerationOption("threshold", float, 0.9, "the confidence that unmasks a token (the threshold decoder)"),
    GenerationOption("guidance_scale", float, 1.0,
                     "classifier-free guidance weight; guided above 1, plain conditional at or below"),
    GenerationOption("guidance_interval", float, (0.0, 1.0),
                     "guide only at diffusion times in [T_LO, T_HI] (default every step)", nargs=2),
    GenerationOption("corrector_steps", int, 0, "Langevin corrector steps after each step"),
    GenerationOption("scheduler", str, None, "sampler (default: the pipeline's own)", choices=SCHEDULER_NAMES),
    GenerationOption("mode", str, None, "sampling mode; block-ar and staggered need a block-causal denoiser "
                     "(default: the pipeline's own)", choices=SAMPLING_MODES),
    GenerationOption("window_blocks", int, None, "blocks in flight in staggered mode (default: the pipeline's own)"),
    GenerationOption("decoder_temperature", float, 0.0,
                     "0 decodes each latent's most likely tokens; T > 0 draws them at temperature T"),
    GenerationOption("denoising_end", float, 1.0, "the fraction of the steps to run; below 1 the text is decoded "
                     "from the clean estimate of the last step run"),
    GenerationOption("project_below", float, 0.0, "parallel mode: below this time each step's clean estimate is "
                     "replaced by the latents of its decoded tokens (0: never)"),
)}


@dataclass(frozen=True)
class ModelKind:
    """One model kind.

    ``name``: ``latentlm train NAME`` (and the adapter's ``kind``); ``help``: one line for the CLI;
    ``recipe``: ``"module:function"`` returning its :class:`~latentlm.recipes.Recipe` (None: not trained
    by a recipe); ``model_class``: ``"module:Class"`` of the model it saves (``config.json``'s
    ``_class_name``); ``adapter``: ``"module:Class"`` of its evaluation adapter (None: it does not write
    text by itself); ``saved_as``: how a folder of it is recognised ("model": ``config.json`` naming
    ``model_class``; "pipeline": ``model_index.json``; "transformers": a transformers ``config.json``);
    ``options``: the :data:`GENERATION_OPTIONS` its ``generate`` takes; ``compare_options``: ``compare``'s
    values for some of them; ``steps_sweep``: ``num_inference_steps`` is an NFE knob (compare sweeps it);
    ``diversity_knobs``: option -> values whose quality-entropy curve ``compare`` draws."""

    name: str
    help: str
    recipe: str | None = None
    model_class: str | None = None
    adapter: str | None = None
    saved_as: str = "model"
    options: tuple[str, ...] = ()
    compare_options: dict[str, Any] = field(default_factory=dict)
    steps_sweep: bool = False
    diversity_knobs: dict[str, tuple] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [o for o in (*self.options, *self.compare_options, *self.diversity_knobs)
                   if o not in GENERATION_OPTIONS]
        if unknown:
            raise ValueError(f"kind {self.name!r}: unknown generation options {unknown}; the vocabulary is "
                             f"latentlm.kinds.GENERATION_OPTIONS")
        if self.saved_as not in ("model", "pipeline", "transformers"):
            raise ValueError(f"kind {self.name!r}: saved_as must be model, pipeline or transformers")

    @property
    def class_name(self) -> str | None:
        return None if self.model_class is None else self.model_class.rpartition(":")[2]


KINDS: dict[str, ModelKind] = {}


def register_kind(kind: ModelKind) -> ModelKind:
    """Add ``kind`` to the registry (a name registered again is replaced: a reloaded module)."""
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> ModelKind:
    if name not in KINDS:
        raise InputError(f"unknown model kind {name!r}; registered: {', '.join(KINDS)}")
    return KINDS[name]


def resolve(ref: str) -> Any:
    """The object named ``"module:attribute"``."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def trainable_kinds() -> list[ModelKind]:
    return [k for k in KINDS.values() if k.recipe is not None]


def writing_kinds() -> list[ModelKind]:
    """The kinds whose saved folders write text (an adapter)."""
    return [k for k in KINDS.values() if k.adapter is not None]


def kinds_taking(option: str) -> list[str]:
    return [k.name for k in writing_kinds() if option in k.options]


def check_options(kind: ModelKind, options: dict[str, Any], where: str = "option") -> None:
    """InputError when ``options`` name one that ``kind`` does not take, naming the kinds that do."""
    for name in options:
        if name not in GENERATION_OPTIONS:
            raise InputError(f"unknown {where} {name!r}; generation options: {', '.join(GENERATION_OPTIONS)}")
        if name not in kind.options:
            takers = kinds_taking(name)
            raise InputError(f"{where} {name!r} does not apply to a {kind.name} model; it applies to "
                             f"{', '.join(takers) or 'no registered kind'}")


def kind_of_folder(folder: str | Path) -> ModelKind:
    """The writing kind of a saved folder, read from its JSON files only (no model is loaded)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"model folder {folder} does not exist")
    if (folder / "model_index.json").is_file():
        saved_as, cls = "pipeline", None
    else:
        try:
            cfg = json.loads((folder / "config.json").read_text("utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"{folder} holds no config.json or model_index.json: not a saved model") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{folder / 'config.json'} is not valid JSON: {e}") from None
        if not isinstance(cfg, dict):
            raise CheckpointError(f"{folder / 'config.json'} is not a model configuration")
        saved_as, cls = ("transformers", None) if "model_type" in cfg else ("model", cfg.get("_class_name"))
        known = [k.class_name for k in KINDS.values() if k.model_class]
        if saved_as == "model" and cls not in known:
            raise CheckpointError(f"{folder / 'config.json'} names class {cls!r}, not a latentlm model "
                                  f"({', '.join(dict.fromkeys(known))})")
    for kind in writing_kinds():
        if kind.saved_as == saved_as and (saved_as != "model" or kind.class_name == cls):
            return kind
    named = f"a {cls}" if cls else "no latentlm model class"
    raise InputError(f"{folder} holds {named}, which is not a language model (the kinds that write text: "
                     f"{', '.join(k.name for k in writing_kinds())})")


_TOKENS = ("temperature", "top_p")
_LATENT = ("num_inference_steps", "guidance_scale", "guidance_interval", "corrector_steps", "scheduler", "mode",
           "window_blocks", "decoder_temperature", "denoising_end", "project_below")
_TEMPERATURES = (0.7, 0.8, 0.9, 1.0, 1.1, 1.2)

for _kind in (
    ModelKind("autoencoder", "the text autoencoder", recipe="latentlm.recipes:autoencoder_recipe",
              model_class="latentlm.autoencoder.modeling_autoencoder:TextAutoencoder"),
    ModelKind("ar", "the autoregressive baseline", recipe="latentlm.recipes:ar_recipe",
              model_class="latentlm.baselines.autoregressive:CausalLM", adapter="latentlm.eval.models:ARAdapter",
              options=_TOKENS, diversity_knobs={"temperature": _TEMPERATURES}),
    ModelKind("mdlm", "the masked-diffusion baseline", recipe="latentlm.recipes:mdlm_recipe",
              model_class="latentlm.baselines.masked_diffusion:MaskedDiffusionLM",
              adapter="latentlm.eval.models:MDLMAdapter",
              options=("num_inference_steps", "decoder", "threshold", "temperature"),
              compare_options={"num_inference_steps": 64, "decoder": "ancestral"}, steps_sweep=True,
              diversity_knobs={"temperature": (0.6, 0.7, 0.8, 0.9, 1.0)}),
    ModelKind("duo", "uniform-state token diffusion, sampled ancestrally or by Psi-samplers",
              recipe="latentlm.recipes:duo_recipe",
              model_class="latentlm.baselines.uniform_diffusion:UniformDiffusionLM",
              adapter="latentlm.eval.models:UniformAdapter",
              options=("num_inference_steps", "decoder", "temperature", "corrector", "corrector_interval"),
              compare_options={"num_inference_steps": 64, "decoder": "ancestral"}, steps_sweep=True,
              diversity_knobs={"temperature": (0.6, 0.7, 0.8, 0.9, 1.0)}),
    ModelKind("sedd", "score-entropy discrete diffusion with uniform transitions, Tweedie tau-leaping",
              recipe="latentlm.recipes:sedd_recipe",
              model_class="latentlm.baselines.score_entropy_diffusion:ScoreEntropyLM",
              adapter="latentlm.eval.models:ScoreEntropyAdapter", options=("num_inference_steps",),
              compare_options={"num_inference_steps": 64}, steps_sweep=True,
              diversity_knobs={"num_inference_steps": (16, 32, 64, 128)}),
    ModelKind("judge", "the judge of `compare` (an AR model larger and trained longer than the baseline)",
              recipe="latentlm.recipes:judge_recipe", model_class="latentlm.baselines.autoregressive:CausalLM"),
    ModelKind("denoiser", "the latent denoiser (exports a complete pipeline)",
              recipe="latentlm.recipes:denoiser_recipe",
              model_class="latentlm.diffusion.modeling_denoiser:LatentDenoiser"),
    ModelKind("ptp", "a Parallel Token Prediction model distilled from a trained AR (--teacher)",
              recipe="latentlm.recipes:ptp_recipe",
              model_class="latentlm.baselines.parallel_token_prediction:ParallelTokenPredictor",
              adapter="latentlm.eval.models:PTPAdapter", options=(*_TOKENS, "draft_tokens")),
    ModelKind("decoder", "adapt the decoder of a trained latent pipeline (--pipeline) to its denoiser's estimates",
              recipe="latentlm.recipes:decoder_recipe"),
    ModelKind("latent", "a latent diffusion pipeline (trained as an autoencoder, then a denoiser)",
              adapter="latentlm.eval.models:LatentAdapter", saved_as="pipeline", options=_LATENT,
              compare_options={"num_inference_steps": 32}, steps_sweep=True,
              diversity_knobs={"decoder_temperature": (0.0, 0.5, 1.0, 1.5),
                               "num_inference_steps": (8, 16, 32, 64, 128)}),
    ModelKind("hf", "a transformers causal language model with its tokenizer",
              adapter="latentlm.eval.models:HFCausalLMAdapter", saved_as="transformers", options=_TOKENS,
              diversity_knobs={"temperature": _TEMPERATURES}),
):
    register_kind(_kind)
