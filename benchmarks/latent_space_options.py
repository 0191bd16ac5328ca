"""Which autoencoder options make latents a decoder can read where a denoiser samples? One table.

    python benchmarks/latent_space_options.py --out runs/lso --preset cpu-small \
        --option offsets=loss.p_offset=0.5,loss.p_cut=0.25 \
        --option vae=model.variational=true,loss.latent_dropout=0.15 [--set train.steps=600] [--max-texts 256]

Trains one autoencoder per option (``base``, the preset as it is, always first; each option adds its
overrides to it) on TinyStories ``train.jsonl`` with one tokenizer, same seed and steps, then scores each
with the generability report (``latentlm eval latents``) on ``valid.jsonl``: reconstruction of whole
documents, of continuations split where the denoiser splits them and of partial prompt latents; decoder
robustness over t; latent geometry. Rerunning resumes: a trained option and its report are kept.
The report says where a decoder fails before any denoiser is trained; it does not say which latent space
a denoiser models best, which takes a denoiser per option (the protocol's ``--variant``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from latentlm.data.readers import read_documents
from latentlm.data.tokenizer import (
    DEFAULT_VOCAB_SIZE,
    load_tokenizer,
    sentence_end_ids,
    train_tokenizer,
)
from latentlm.eval.latents import generability_report, report_table
from latentlm.files import move_tree, write_text_atomic
from latentlm.loading import load_model
from latentlm.protocol import steady_seconds
from latentlm.recipes import run_training

ROOT = Path(__file__).resolve().parents[1]
GRID = (0.3, 0.4, 0.5, 0.6)  # the columns of the summary; the report keeps its whole grid


def parse_option(spec: str) -> tuple[str, list[str]]:
    name, eq, rest = spec.partition("=")
    overrides = [o.strip() for o in rest.split(",") if o.strip()]
    if not eq or not name.strip() or not overrides or name.strip() == "base":
        raise SystemExit(f"--option is NAME=SECTION.KEY=VALUE[,SECTION.KEY=VALUE...] (not 'base'), got {spec!r}")
    return name.strip(), overrides


def summary_row(name: str, report: dict, seconds: float | None) -> str:
    acc = {r["split"]: r["accuracy"] for r in report["reconstruction"]}
    rob = {round(r["t"], 2): r for r in report["robustness"]}
    g = report["geometry"]
    cells = [name, *(f"{100 * v:.2f}" for v in acc.values()),
             f"{100 * report['partial_prompt_group']['accuracy']:.2f}",
             *(f"{100 * rob[t]['accuracy']:.1f} / {rob[t]['entropy']:.2f}" if t in rob else "-" for t in GRID),
             f"{g['participation_ratio']:.1f} of {g['dim']}", f"{g['round_trip_drift']:.4f}",
             "-" if seconds is None else f"{seconds / 60:.1f}"]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="run folder (resumed when it exists)")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "tinystories"),
                   help="a folder with train.jsonl and valid.jsonl")
    p.add_argument("--preset", default="cpu-small")
    p.add_argument("--option", dest="options", action="append", default=[], metavar="NAME=SECTION.KEY=VALUE,...")
    p.add_argument("--set", dest="common", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="an override of every option, base included (e.g. train.steps=600)")
    p.add_argument("--max-texts", type=int, default=256)
    args = p.parse_args(argv)
    data = Path(args.data_dir)
    train, valid = data / "train.jsonl", data / "valid.jsonl"
    if not (train.is_file() and valid.is_file()):
        raise SystemExit(f"{data} needs train.jsonl and valid.jsonl (the TinyStories folder of ../shared/data)")
    options = [("base", []), *(parse_option(s) for s in args.options)]
    if len({n for n, _ in options}) != len(options):
        raise SystemExit("two --option share a name")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = out / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        tmp = out / "tokenizer.tmp"
        train_tokenizer(read_documents([train]), DEFAULT_VOCAB_SIZE).save_pretrained(tmp)
        move_tree(tmp, tok_dir)
    docs = read_documents([valid])
    ends = torch.tensor(sentence_end_ids(load_tokenizer(tok_dir)))
    rows = []
    for name, overrides in options:
        folder = out / name
        overrides = [*args.common, *overrides]
        if not (folder / "config.json").is_file():
            print(f"training {name}: {' '.join(overrides) or 'the preset'}", flush=True)
            t0 = time.perf_counter()
            result = run_training("autoencoder", [train], folder, preset=args.preset, overrides=overrides,
                                  valid=[valid], tokenizer=tok_dir)
            if result.interrupted:
                print(f"{name} interrupted at step {result.step}: rerun to resume")
                return 130
            print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
        path = folder / "eval_latents.json"
        if not path.is_file():
            ae = load_model(folder)
            report = generability_report(ae, load_tokenizer(folder), docs, ends, max_texts=args.max_texts)
            write_text_atomic(folder / "eval_latents.md", report_table(report) + "\n")
            write_text_atomic(path, json.dumps(report, indent=1))
        report = json.loads(path.read_text())
        steady = steady_seconds(folder / "metrics.jsonl")
        rows.append(summary_row(name, report, steady[0] if steady else None) + f" {' '.join(overrides) or '-'} |")
    splits = [r["split"] for r in report["reconstruction"]]
    table = ["| option | " + " | ".join(f"{s} %" for s in splits) + " | partial prompt latent % | "
             + " | ".join(f"t = {t}: acc % / entropy" for t in GRID)
             + " | participation ratio | round-trip drift | training, min | overrides |",
             "|" + "---|" * (len(splits) + len(GRID) + 6)]
    text = "\n".join([*table, *rows]) + "\n"
    write_text_atomic(out / "summary.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
