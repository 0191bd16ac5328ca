"""Parallel Token Prediction against its own AR: tokens per AR call, latency and throughput, identical samples.

    python benchmarks/ptp_speed.py --ptp runs/ptp --data ../shared/data/tinystories/valid.jsonl \
        [--prompts 32] [--draft-tokens 2 4 8 16] [--lengths 128 1000] [--batch 16] [--temperature 1.0]

The PTP folder holds its AR (``teacher/``); both run in this process, one after the other, on the same
machine. For each number of draft tokens k: the continuations of ``--prompts`` openings (128 new tokens)
with the tokens each verification call committed (mean and distribution: accepted drafts + the AR's own
next pick) and whether every sample equals the AR's at the same seed; then, for each length, the latency
of one sample at batch 1 and the tokens/s at batch ``--batch`` (after a warm-up call), AR first; these
rows sample every token asked for, going on past an end-of-text as the stream the models were trained on.
Prints JSON rows as they come and markdown tables at the end.
"""

from __future__ import annotations

import argparse
import collections
import json
import time

import torch

from latentlm.data.readers import read_documents
from latentlm.eval.compare import CompareConfig, openings
from latentlm.eval.models import ARAdapter, load_language_model


def _timed(lm, prompts, n, options, seed=0) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = lm.generate(prompts, n, generator=torch.Generator().manual_seed(seed), **options)
    return time.perf_counter() - t0, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ptp", required=True, help="a PTP folder (latentlm train ptp)")
    p.add_argument("--data", required=True)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--draft-tokens", type=int, nargs="+", default=[2, 4, 8, 16])
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 1000])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    ptp = load_language_model(args.ptp, "ptp")
    ar = ARAdapter(ptp.model, ptp.tokenizer, "ar")
    docs = read_documents([args.data])
    prompts = [o for o, _ in openings(docs, args.prompts, CompareConfig(prompts=args.prompts,
                                                                           max_new_tokens=args.new_tokens), False)]
    sampling = dict(temperature=args.temperature, top_p=args.top_p)
    reference = ar.generate(prompts, args.new_tokens, generator=torch.Generator().manual_seed(0), **sampling).texts
    accept_rows, speed_rows = [], []
    for k in args.draft_tokens:
        out = ptp.generate(prompts, args.new_tokens, generator=torch.Generator().manual_seed(0), draft_tokens=k,
                           **sampling)
        per_call = ptp.last_stats.tokens_per_call
        hist = collections.Counter(per_call)
        row = {"k": k, "tokens_per_call": sum(per_call) / len(per_call), "calls": len(per_call),
               "distribution": {n: hist[n] / len(per_call) for n in range(1, k + 2)},
               "identical": sum(a == b for a, b in zip(out.texts, reference)), "n": len(prompts)}
        print(json.dumps(row), flush=True)
        accept_rows.append(row)
    for n in args.lengths:
        for name, lm, options in [("ar", ar, {}), *[(f"ptp k={k}", ptp, {"draft_tokens": k})
                                                    for k in args.draft_tokens]]:
            options = {**options, **sampling, "stop_at_eot": False}  # n tokens each, past any end-of-text
            _timed(lm, prompts[:1], n, options)  # warm-up
            latency, out = _timed(lm, prompts[:1], n, options)
            calls = out.nfe
            per_call = lm.last_stats.mean_tokens_per_call if lm is ptp else 1.0
            batch_s, _ = _timed(lm, prompts[: args.batch], n, options)
            row = {"model": name, "new_tokens": n, "latency_s": latency, "calls": calls,
                   "tokens_per_ar_call": per_call, "batch": args.batch, "tokens_per_s": args.batch * n / batch_s}
            print(json.dumps(row), flush=True)
            speed_rows.append(row)

    print("\n| k | tokens per AR call (mean) | share of calls committing 1 / 2 / 3 / 4 / 5+ | identical samples |")
    print("|---|---|---|---|")
    for r in accept_rows:
        d = r["distribution"]
        shares = " / ".join(f"{d.get(i, 0):.2f}" for i in range(1, 5)) + f" / {sum(v for i, v in d.items() if i >= 5):.2f}"
        print(f"| {r['k']} | {r['tokens_per_call']:.2f} | {shares} | {r['identical']} / {r['n']} |")
    print(f"\n| model | new tokens | latency (s, batch 1) | network calls | tokens per AR call | "
          f"tokens/s (batch {args.batch}) | latency / AR |")
    print("|---|---|---|---|---|---|---|")
    ref = {r["new_tokens"]: r["latency_s"] for r in speed_rows if r["model"] == "ar"}
    for r in speed_rows:
        print(f"| {r['model']} | {r['new_tokens']} | {r['latency_s']:.2f} | {r['calls']} | "
              f"{r['tokens_per_ar_call']:.2f} | {r['tokens_per_s']:.0f} | {r['latency_s'] / ref[r['new_tokens']]:.2f} |")


if __name__ == "__main__":
    main()
