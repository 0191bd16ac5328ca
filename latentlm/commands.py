"""The commands of ``latentlm`` (:mod:`latentlm.cli` parses them): each calls the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from latentlm.autoencoder.evaluation import evaluate_autoencoder
from latentlm.autoencoder.evaluation import summary_table as autoencoder_summary
from latentlm.config import parse_overrides
from latentlm.cost import cost_record, run_cost
from latentlm.data import load_tokenizer, read_documents, train_tokenizer
from latentlm.data.readers import corpus_documents
from latentlm.data.shards import write_shards
from latentlm.data.synthetic import generate_stories, write_jsonl
from latentlm.data.tokenizer import sentence_end_ids
from latentlm.device import resolve_device
from latentlm.errors import ConfigError, DataError, InputError
from latentlm.eval.compare import CompareConfig, compare
from latentlm.eval.latents import generability_report, report_table
from latentlm.eval.models import load_language_model
from latentlm.eval.report import summary_table
from latentlm.files import write_text_atomic
from latentlm.kinds import GENERATION_OPTIONS, kind_of_folder, kinds_taking
from latentlm.loading import describe, is_pipeline_folder, load_model, load_pipeline
from latentlm.quickstart import quickstart
from latentlm.recipes import run_training


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command ``args``; returns the exit status."""
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
        info = describe(args.model)
        cost = run_cost(args.model)  # what its training run cost, when latentlm trained it
        if cost is not None:
            info["training"] = cost_record(cost)
        print(json.dumps(info, indent=2))
    elif args.command == "generate":
        if args.num_samples_per_prompt < 1:
            raise InputError(f"--num-samples-per-prompt must be positive, got {args.num_samples_per_prompt}")
        device = resolve_device(args.device)
        kind = kind_of_folder(args.model)
        options = {name: getattr(args, name) for name in GENERATION_OPTIONS if getattr(args, name) is not None}
        for name in options:  # before loading the model: a flag its kind ignores is a mistake
            if name not in kind.options:
                raise InputError(f"{GENERATION_OPTIONS[name].flag} does not apply to {args.model} (a {kind.name} "
                                 f"model); it applies to {', '.join(kinds_taking(name))}")
        if "guidance_interval" in options:
            options["guidance_interval"] = tuple(options["guidance_interval"])
        lm = load_language_model(args.model, device=device)
        out = lm.generate([args.prompt] * args.num_samples_per_prompt, args.max_new_tokens,
                          generator=torch.Generator().manual_seed(args.seed), **options)
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


