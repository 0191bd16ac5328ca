"""Token shards at corpus scale: tokenization throughput and memory, and training memory against corpus size.

    python benchmarks/shard_memory.py --tokenizer runs/tok --source ../shared/data/tinystories/train.jsonl \
        --valid ../shared/data/tinystories/valid.jsonl --work /tmp/shard_bench [--small 10000000] \
        [--large 1000000000] [--steps 20] [--repeats 5]

Writes two corpora by repeating the documents of ``--source`` (``--small`` and ``--large`` tokens: 20 MB
and 2 GB of uint16 shards by default), tokenizes each with ``latentlm data tokenize`` (wall-clock,
tokens/s, peak RSS), trains ``latentlm train ar --preset cpu-small`` on each for ``--steps`` steps,
``--repeats`` times alternating the corpora (peak RSS: median and range) and prints a table. Every
command runs in its own process; peak RSS is the kernel's maximum resident set of that process. The work folder is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from latentlm.data.readers import read_documents
from latentlm.data.tokenizer import load_tokenizer

PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")


def _run(cmd: list[str]) -> tuple[float, int]:
    """Wall-clock seconds and peak RSS (bytes) of ``cmd`` in its own process."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PEAK, *cmd], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    peak = int(next(line for line in out.stdout.splitlines() if line.startswith("PEAK_KB")).split()[1]) * 1024
    return time.perf_counter() - t0, peak


def _write_corpus(docs: list[str], tokens_per_doc: float, target: int, path: Path) -> None:
    lines = [json.dumps({"text": d}) + "\n" for d in docs]
    reps = max(1, round(target / (tokens_per_doc * len(docs))))
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(reps):
            f.writelines(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--valid", required=True)
    p.add_argument("--work", required=True, help="scratch folder (deleted at the end)")
    p.add_argument("--small", type=int, default=10_000_000)
    p.add_argument("--large", type=int, default=1_000_000_000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5, help="training runs per corpus (peak RSS: median, range)")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=False)
    latentlm = [sys.executable, "-m", "latentlm"]
    try:
        docs = read_documents(args.source)
        tok = load_tokenizer(args.tokenizer)
        tokens_per_doc = sum(len(x) + 1 for x in tok(docs, add_special_tokens=False)["input_ids"]) / len(docs)
        rows = []
        for name, target in (("small", args.small), ("large", args.large)):
            corpus, shards = work / f"{name}.jsonl", work / f"{name}_shards"
            _write_corpus(docs, tokens_per_doc, target, corpus)
            secs, peak_tok = _run([*latentlm, "data", "tokenize", "--tokenizer", args.tokenizer, "--data",
                                   str(corpus), "--out", str(shards)])
            manifest = json.loads((shards / "manifest.json").read_text())
            corpus.unlink()
            rows.append({"corpus": name, "shards": shards, "tokens": manifest["tokens"],
                         "shard_bytes": sum(f.stat().st_size for f in shards.glob("shard_*.bin")),
                         "tokenize_s": secs, "tokens_per_s": manifest["tokens"] / secs,
                         "tokenize_peak_rss": peak_tok, "train_peak_rss": []})
        # a training run's peak RSS varies by a few hundred MB between identical runs (where the
        # allocator places activations): alternate the corpora and compare medians
        for i in range(args.repeats):
            for r in rows:
                out = work / f"{r['corpus']}_ar"
                _, peak = _run([*latentlm, "train", "ar", "--preset", "cpu-small", "--set",
                                f"train.steps={args.steps}", "--set", "train.eval_every=0", "--set",
                                "train.save_every=0", "--set", "train.eval_batches=1", "--data", str(r["shards"]),
                                "--valid", args.valid, "--out", str(out)])
                shutil.rmtree(out)
                r["train_peak_rss"].append(peak)
                print(json.dumps({"corpus": r["corpus"], "repeat": i, "train_peak_rss": peak}), flush=True)
        mb = 2**20
        print("\n| corpus | tokens | shards (GB) | tokenize (s) | tokens/s | tokenize peak RSS (MB) | "
              f"train ar, {args.steps} steps, peak RSS (MB): median [range] of {args.repeats} |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            t = r["train_peak_rss"]
            print(f"| {r['corpus']} | {r['tokens']:,} | {r['shard_bytes'] / 1e9:.3f} | {r['tokenize_s']:.0f} | "
                  f"{r['tokens_per_s']:,.0f} | {r['tokenize_peak_rss'] / mb:.0f} | "
                  f"{statistics.median(t) / mb:.0f} [{min(t) / mb:.0f}, {max(t) / mb:.0f}] |")
        diff = statistics.median(rows[1]["train_peak_rss"]) - statistics.median(rows[0]["train_peak_rss"])
        print(f"\ntraining peak RSS, median large - median small: {diff / mb:.0f} MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
