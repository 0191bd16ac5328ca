"""Command line: ``latentlm <command> ...`` (also ``python -m latentlm``).

Parsing only: the parser is built from light modules (``latentlm.choices``, ``latentlm.config``), so
``--help`` answers without importing torch; the commands run in :mod:`latentlm.commands`.
"""

from __future__ import annotations

import argparse
import sys

from latentlm.choices import (
    DEFAULT_SHARD_TOKENS,
    DEFAULT_VOCAB_SIZE,
    QUICKSTART_PROMPTS,
    QUICKSTART_STORIES,
)
from latentlm.config import available_presets
from latentlm.errors import LatentLMError
from latentlm.eval.compare_config import CompareConfig
from latentlm.kinds import GENERATION_OPTIONS, kinds_taking, trainable_kinds


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
    for kind in trainable_kinds():
        _add_train_common(tr.add_parser(kind.name, help=f"train {kind.help}"))

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
    gen.add_argument("--num-samples-per-prompt", type=int, default=1, help="samples drawn for the prompt")
    gen.add_argument("--seed", type=int, default=0)
    for option in GENERATION_OPTIONS.values():  # one flag per option; a flag the model's kind does not take is an error
        takers = ", ".join(kinds_taking(option.name))
        gen.add_argument(option.flag, type=option.type, nargs=option.nargs, default=None,
                         choices=list(option.choices) if option.choices else None,
                         metavar=("T_LO", "T_HI") if option.nargs == 2 else None,
                         help=f"{option.help} [{takers}]")
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
                          "--option latent.num_inference_steps=64")

    qs = sub.add_parser("quickstart", help="the main job: train every model on synthetic stories and compare")
    qs.add_argument("--out", default="runs/quickstart")
    qs.add_argument("--n-stories", type=int, default=QUICKSTART_STORIES, help="synthetic training stories")
    qs.add_argument("--n-prompts", type=int, default=QUICKSTART_PROMPTS, help="held-out openings to continue")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from latentlm.commands import dispatch  # torch and the models: after parsing

        return dispatch(args)
    except LatentLMError as e:
        print(f"latentlm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("latentlm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
