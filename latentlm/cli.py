"""Command line: ``latentlm <command> ...`` (also ``python -m latentlm``).

Parsing and dispatch only; the work lives in the library modules.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from latentlm.autoencoder.evaluation import evaluate_autoencoder
from latentlm.autoencoder.evaluation import summary_table as autoencoder_summary
from latentlm.baselines.mdlm_decoders import DECODERS
from latentlm.config import available_presets, parse_overrides
from latentlm.data import load_tokenizer, read_documents, train_tokenizer
from latentlm.data.readers import corpus_documents
from latentlm.data.shards import DEFAULT_SHARD_TOKENS, write_shards
from latentlm.data.synthetic import generate_stories, write_jsonl
from latentlm.data.tokenizer import DEFAULT_VOCAB_SIZE
from latentlm.device import resolve_device
from latentlm.errors import ConfigError, DataError, InputError, LatentLMError
from latentlm.eval.compare import CompareConfig, compare
from latentlm.eval.models import load_language_model
from latentlm.eval.report import summary_table
from latentlm.files import write_text_atomic
from latentlm.loading import describe, load_model
from latentlm.pipeline_latent_diffusion import MODES, SCHEDULERS
from latentlm.quickstart import N_PROMPTS, N_STORIES, quickstart
from latentlm.recipes import run_training


def _add_train_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help=f"named preset ({', '.join(available_presets())})")
    p.add_argument("--config", help="TOML file with the same layout as a preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting, e.g. --set train.steps=100 (repeatable)")
    p.add_argument("--data", nargs="+", required=True, help=".txt/.jsonl files or folders")
    p.add_argument("--valid", nargs="+", help="validation files (default: a split of --data)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: train one on --data)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, metrics, exported model")
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints already in --out")
    p.add_argument("--autoencoder", help="trained autoencoder folder (denoiser only)")
    p.add_argument("--teacher", help="trained AR folder to distil (ptp only); its tokenizer is used")
    p.add_argument("--pipeline", help="trained latent pipeline folder whose decoder to adapt (decoder only)")
    p.add_argument("--init-from", metavar="DIR",
                   help="fine-tune: start from the weights of a trained model of this kind and architecture "
                        "(fresh optimizer and learning-rate schedule; its tokenizer is used)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentlm", description="Latent-space language diffusion.")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="make or inspect data").add_subparsers(dest="data_cmd", required=True)
    syn = data.add_parser("synthetic", help="write synthetic stories with known facts as JSONL")
    syn.add_argument("--n", type=int, required=True, help="number of stories")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--out", required=True, help="output .jsonl file")
    syn.add_argument("--min-gap", type=int, default=0, help="filler sentences before a reference (min)")
    syn.add_argument("--max-gap", type=int, default=2, help="filler sentences before a reference (max)")

    tk = data.add_parser("tokenize", help="tokenize a corpus into token shards on disk (for --data of train)")
    tk.add_argument("--tokenizer", required=True, help="tokenizer folder (the one the models will use)")
    tk.add_argument("--data", nargs="+", default=[],
                    help=".txt/.jsonl files or folders, or .parquet/.arrow files (streamed through datasets)")
    tk.add_argument("--hf-dataset", help="a Hugging Face dataset name to stream (needs the hub)")
    tk.add_argument("--split", default="train", help="split of --hf-dataset")
    tk.add_argument("--hf-config", help="configuration of --hf-dataset")
    tk.add_argument("--field", default="text", help="text column of a dataset")
    tk.add_argument("--out", required=True, help="shard folder (resumed when a run was cut)")
    tk.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard file (at most)")

    tr = sub.add_parser("train", help="train a tokenizer or a model").add_subparsers(dest="kind", required=True)
    tok = tr.add_parser("tokenizer", help="train a byte-level BPE tokenizer")
    tok.add_argument("--data", nargs="+", required=True)
    tok.add_argument("--out", required=True)
    tok.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    for kind, what in (("autoencoder", "the text autoencoder"), ("ar", "the autoregressive baseline"),
                       ("mdlm", "the masked-diffusion baseline"),
                       ("judge", "the judge of `compare` (an AR model larger and trained longer than the baseline)"),
                       ("denoiser", "the latent denoiser (exports a complete pipeline)"),
                       ("ptp", "a Parallel Token Prediction model distilled from a trained AR (--teacher)"),
                       ("decoder", "adapt the decoder of a trained latent pipeline (--pipeline) to its denoiser's "
                                   "estimates")):
        _add_train_common(tr.add_parser(kind, help=f"train {what}"))

    ev = sub.add_parser("eval", help="evaluate a saved model").add_subparsers(dest="eval_kind", required=True)
    eva = ev.add_parser("autoencoder", help="reconstruction under latent noise, latent statistics, "
                        "interpolation, semantic alignment, speed")
    eva.add_argument("--model", required=True)
    eva.add_argument("--data", nargs="+", required=True)
    eva.add_argument("--out", help="JSON file to write (default: MODEL/eval_autoencoder.json)")
    eva.add_argument("--max-texts", type=int, help="evaluate on the first N texts only")
    eva.add_argument("--seed", type=int, default=0)

    evl = ev.add_parser("latents", help="how generable a latent space is: reconstruction where the denoiser "
                        "works (split continuations, partial prompt latents), decoder robustness over t, latent "
                        "geometry, and for a pipeline its denoiser's per-t map")
    evl.add_argument("--model", required=True, help="an autoencoder folder or a latent pipeline folder")
    evl.add_argument("--data", nargs="+", required=True, help="held-out texts")
    evl.add_argument("--out", help="JSON file to write (default: MODEL/eval_latents.json)")
    evl.add_argument("--max-texts", type=int, default=256, help="texts scored (a seeded sample)")
    evl.add_argument("--prompts", type=int, default=64, help="openings of the per-t map (a pipeline)")
    evl.add_argument("--seed", type=int, default=0)

    info = sub.add_parser("info", help="describe a saved model: class, config, parameter count")
    info.add_argument("--model", required=True)

    gen = sub.add_parser("generate", help="continue a prompt with a saved model")
    gen.add_argument("--model", required=True)
    gen.add_argument("prompt", nargs="?", default="")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--num-samples", type=int, default=1)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--steps", type=int, default=32, help="denoising steps (latent, mdlm)")
    gen.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance (latent)")
    gen.add_argument("--guidance-interval", type=float, nargs=2, default=(0.0, 1.0), metavar=("T_LO", "T_HI"),
                     help="guide only at diffusion times in [T_LO, T_HI] (latent; default every step)")
    gen.add_argument("--scheduler", choices=list(SCHEDULERS), help="sampler (latent; default: the pipeline's own)")
    gen.add_argument("--mode", choices=list(MODES),
                     help="sampling mode (latent; block-ar and staggered need a block-causal denoiser; "
                          "default: the pipeline's own)")
    gen.add_argument("--window-blocks", type=int, help="blocks in flight in staggered mode (latent; default: "
                                                         "the pipeline's own)")
    gen.add_argument("--decoder-temperature", type=float, default=0.0,
                     help="latent: 0 decodes the most likely tokens, T > 0 draws them at temperature T")
    gen.add_argument("--denoising-end", type=float, default=1.0,
                     help="latent: the fraction of the steps to run; below 1 the text is decoded from the clean "
                          "estimate of the last step run")
    gen.add_argument("--project-below", type=float, default=0.0,
                     help="latent, parallel mode: below this time t each step's clean estimate is replaced by the "
                          "latents of its decoded tokens (0: never)")
    gen.add_argument("--decoder", choices=list(DECODERS), default="ancestral",
                     help="decoder (mdlm)")
    gen.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (ar, ptp, transformers models)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (ar, ptp, transformers models)")
    gen.add_argument("--draft-tokens", type=int, default=0,
                     help="tokens drafted per call (ptp; default: as many as the model was trained for)")
    gen.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda or cuda:N")

    cmp = sub.add_parser("compare", help="likelihood, sample quality, consistency and speed of saved models "
                         "in one report")
    cmp.add_argument("--model", dest="models", action="append", required=True, metavar="NAME=DIR",
                     help="a model to compare (repeatable), e.g. --model latent=runs/denoiser")
    cmp.add_argument("--data", required=True, help="held-out texts (.jsonl/.txt): openings, references, likelihood")
    cmp.add_argument("--out", required=True, help="report folder (report.md, results.json, plots, samples)")
    cmp.add_argument("--train", help="training texts: memorisation, name lexicon, sanity samplers")
    cmp.add_argument("--judge", help="AR judge model folder (`latentlm train judge`) for generation perplexity")
    cmp.add_argument("--seeds", type=int, default=CompareConfig.seeds, help="sampling seeds per model")
    cmp.add_argument("--prompts", type=int, default=CompareConfig.prompts, help="openings to continue")
    cmp.add_argument("--max-new-tokens", type=int, default=CompareConfig.max_new_tokens)
    cmp.add_argument("--nll-texts", type=int, default=CompareConfig.nll_texts, help="texts for the likelihood")
    cmp.add_argument("--no-mauve", action="store_true", help="skip MAUVE")
    cmp.add_argument("--speed-lengths", type=int, nargs="+", default=list(CompareConfig.speed_lengths))
    cmp.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda or cuda:N")
    cmp.add_argument("--option", dest="options", action="append", default=[], metavar="NAME.KEY=VALUE",
                     help="a generation option of one model (repeatable), e.g. --option mdlm.decoder=llada "
                          "--option latent.steps=64")

    qs = sub.add_parser("quickstart", help="the main job: train every model on synthetic stories and compare")
    qs.add_argument("--out", default="runs/quickstart")
    qs.add_argument("--n-stories", type=int, default=N_STORIES, help="synthetic training stories")
    qs.add_argument("--n-prompts", type=int, default=N_PROMPTS, help="held-out openings to continue")
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "data" and args.data_cmd == "tokenize":
        if not args.data and not args.hf_dataset:
            raise InputError("give --data PATH... or --hf-dataset NAME to tokenize")
        manifest = write_shards(corpus_documents(args.data, args.hf_dataset, split=args.split, field=args.field,
                                                 config=args.hf_config),
                                load_tokenizer(args.tokenizer), args.out, shard_tokens=args.shard_tokens,
                                sources=[*map(str, args.data), *([args.hf_dataset] if args.hf_dataset else [])])
        print(json.dumps({k: manifest[k] for k in ("tokens", "documents", "dtype")} | {"shards": len(manifest["shards"]),
                                                                                       "out": args.out}))
    elif args.command == "data":
        stories = generate_stories(args.n, args.seed, min_gap=args.min_gap, max_gap=args.max_gap)
        print(f"wrote {len(stories)} stories to {write_jsonl(stories, args.out)}")
    elif args.command == "train" and args.kind == "tokenizer":
        tok = train_tokenizer(read_documents(args.data), args.vocab_size)
        tok.save_pretrained(args.out)
        print(f"tokenizer with {len(tok)} tokens saved to {args.out}")
    elif args.command == "train":
        result = run_training(args.kind, args.data, args.out, preset=args.preset,
                              config_file=args.config, overrides=args.overrides, valid=args.valid,
                              tokenizer=args.tokenizer, resume=not args.no_resume,
                              autoencoder=args.autoencoder, init_from=args.init_from, teacher=args.teacher,
                              pipeline=args.pipeline)
        if result.interrupted:
            print(f"interrupted at step {result.step}; checkpoint saved, rerun the command to resume")
            return 130
        print(json.dumps({"step": result.step, "train_loss": result.train_loss,
                          "valid_loss": result.valid_loss, "out": str(result.out_dir)}))
    elif args.command == "eval" and args.eval_kind == "latents":
        _eval_latents(args)
    elif args.command == "eval":
        model = load_model(args.model)
        if type(model).__name__ != "TextAutoencoder":
            raise InputError(f"{args.model} holds a {type(model).__name__}, not a TextAutoencoder")
        if args.max_texts is not None and args.max_texts < 1:
            raise InputError(f"--max-texts must be positive, got {args.max_texts}")
        result = evaluate_autoencoder(model, load_tokenizer(args.model), read_documents(args.data),
                                      max_texts=args.max_texts, seed=args.seed)
        out = Path(args.out) if args.out else Path(args.model) / "eval_autoencoder.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, json.dumps(result, indent=2))
        print(autoencoder_summary(result))
        print(f"written to {out}")
    elif args.command == "info":
        print(json.dumps(describe(args.model), indent=2))
    elif args.command == "generate":
        if args.num_samples < 1:
            raise InputError(f"--num-samples must be positive, got {args.num_samples}")
        lm = load_language_model(args.model, device=resolve_device(args.device))
        options = {"ar": dict(temperature=args.temperature, top_p=args.top_p),
                   "ptp": dict(temperature=args.temperature, top_p=args.top_p, draft_tokens=args.draft_tokens),
                   "hf": dict(temperature=args.temperature, top_p=args.top_p),
                   "mdlm": dict(decoder=args.decoder, steps=args.steps),
                   "latent": dict(steps=args.steps, guidance_scale=args.guidance_scale,
                                  guidance_interval=tuple(args.guidance_interval), scheduler=args.scheduler,
                                  mode=args.mode, window_blocks=args.window_blocks,
                                  decoder_temperature=args.decoder_temperature, denoising_end=args.denoising_end,
                                  project_below=args.project_below)}
        out = lm.generate([args.prompt] * args.num_samples, args.max_new_tokens,
                          generator=torch.Generator().manual_seed(args.seed), **options[lm.kind])
        for text in out.texts:
            print(text)
        print(f"(NFE {out.nfe})", file=sys.stderr)
    elif args.command == "compare":
        models = {}
        for spec in args.models:
            name, sep, folder = spec.partition("=")
            if not sep or not name or not folder:
                raise InputError(f"--model takes NAME=DIR, got {spec!r}")
            if name in models:
                raise InputError(f"model name {name!r} given twice")
            models[name] = folder
        for name in ("seeds", "prompts", "max_new_tokens", "nll_texts"):
            if getattr(args, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
        cfg = CompareConfig(prompts=args.prompts, max_new_tokens=args.max_new_tokens, seeds=args.seeds,
                            nll_texts=args.nll_texts, mauve=not args.no_mauve,
                            speed_lengths=tuple(args.speed_lengths))
        try:
            options = parse_overrides(args.options)
        except ConfigError:
            raise InputError(f"--option takes NAME.KEY=VALUE (e.g. mdlm.decoder=llada), got {args.options}") from None
        results = compare(models, args.data, args.out, train=args.train, judge=args.judge, cfg=cfg,
                          options=options, device=resolve_device(args.device))
        print(summary_table(results))
        print(f"report: {Path(args.out) / 'report.md'}")
    elif args.command == "quickstart":
        quickstart(Path(args.out), n_stories=args.n_stories, n_prompts=args.n_prompts)
    return 0


def _eval_latents(args) -> None:
    """``latentlm eval latents``: the generability report of an autoencoder or a pipeline."""
    import torch

    from latentlm.data.tokenizer import sentence_end_ids
    from latentlm.eval.latents import generability_report, report_table
    from latentlm.loading import is_pipeline_folder, load_pipeline

    for name in ("max_texts", "prompts"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    pipe = None
    if is_pipeline_folder(args.model):
        pipe = load_pipeline(args.model)
        ae, tok = pipe.autoencoder, pipe.tokenizer
    else:
        ae = load_model(args.model)
        if type(ae).__name__ != "TextAutoencoder":
            raise InputError(f"{args.model} holds a {type(ae).__name__}, not a TextAutoencoder or a latent pipeline")
        tok = load_tokenizer(args.model)
    docs = read_documents(args.data)
    if not docs:
        raise DataError(f"{' '.join(args.data)} holds no text")
    report = generability_report(ae, tok, docs, torch.tensor(sentence_end_ids(tok)), pipe=pipe,
                                 max_texts=args.max_texts, prompts=args.prompts, seed=args.seed)
    out = Path(args.out) if args.out else Path(args.model) / "eval_latents.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(report, indent=2))
    print(report_table(report))
    print(f"written to {out}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except LatentLMError as e:
        print(f"latentlm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("latentlm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
