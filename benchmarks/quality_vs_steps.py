"""Sample quality against sampling steps on real text: does a sampler plateau as steps grow, and does a
corrector lift the plateau? For any model whose kind has steps (duo, MDLM, SEDD, a latent pipeline).

For each sampler setting and each step count, the same openings are continued with the same seeds and
scored by judge generative perplexity, word entropy, rep-4 and MAUVE against the real continuations of
those openings (with its 95% interval from half-samples of the openings, ``metrics.mauve_interval``).
Generation is cached per (setting, steps, batch) in ``--cache``, so an interrupted run resumes.

    python benchmarks/quality_vs_steps.py --model runs/ts/duo --judge runs/ts/judge \
        --data ../shared/data/tinystories/valid.jsonl --steps 8 16 32 64 128 256 \
        --sampler ancestral=decoder=ancestral \
        --sampler psi=decoder=psi,corrector=0.5,corrector_interval=0:0.5 --cache runs/duo_steps
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from latentlm.data.readers import read_documents
from latentlm.errors import InputError, LatentLMError
from latentlm.eval import metrics as M
from latentlm.eval.compare import (
    CompareConfig,
    System,
    cut_references,
    generate_samples,
    is_synthetic,
    judge_scores,
    openings,
    perplexity,
)
from latentlm.eval.models import load_language_model
from latentlm.files import write_text_atomic
from latentlm.kinds import get_kind


def parse_sampler(spec: str) -> tuple[str, dict]:
    """``NAME=KEY=VALUE,KEY=VALUE``: generation options of one sampler setting; a pair of numbers is
    written ``LO:HI`` (e.g. ``corrector_interval=0:0.5``)."""
    name, eq, rest = spec.partition("=")
    if not eq or not name.strip():
        raise InputError(f"--sampler takes NAME=KEY=VALUE[,KEY=VALUE...], got {spec!r}")
    options: dict = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise InputError(f"--sampler {name}: {item!r} is not KEY=VALUE")
        options[key.strip()] = _value(value.strip())
    return name.strip(), options


def _value(v: str):
    if ":" in v:
        return tuple(float(x) for x in v.split(":"))
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", required=True, help="a trained model folder whose kind has sampling steps")
    p.add_argument("--data", required=True, help="held-out texts (.jsonl): openings and real continuations")
    p.add_argument("--judge", help="an AR judge folder (`latentlm train judge`) for generative perplexity")
    p.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    p.add_argument("--sampler", dest="samplers", action="append", default=[], metavar="NAME=KEY=VALUE,...",
                   help="a sampler setting (repeatable); default: the model's own options")
    p.add_argument("--prompts", type=int, default=256, help="openings (one continuation each)")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-mauve", action="store_true")
    p.add_argument("--cache", required=True, help="folder for the cached samples and results.json")
    args = p.parse_args()
    try:
        run(args)
    except LatentLMError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def run(args) -> None:
    samplers = [parse_sampler(s) for s in args.samplers] or [("default", {})]
    if min(args.steps) < 1:
        raise InputError(f"--steps must be positive, got {args.steps}")
    lm = load_language_model(args.model)
    if not get_kind(lm.kind).steps_sweep:
        raise InputError(f"{args.model} is a model of kind {lm.kind}, which has no sampling steps to sweep")
    judge = load_language_model(args.judge) if args.judge else None
    cache = Path(args.cache)
    (cache / "samples").mkdir(parents=True, exist_ok=True)
    cfg = CompareConfig(prompts=args.prompts, max_new_tokens=args.new_tokens, seed=args.seed)
    docs = read_documents([args.data])
    pairs = openings(docs, args.prompts, cfg, is_synthetic(docs))
    prompts = [o for o, _ in pairs]
    real = cut_references([c for _, c in pairs], cfg)
    real_features = None if args.no_mauve else M.sentence_embeddings(real)
    groups = list(range(len(prompts)))
    print(f"{args.model} ({lm.kind}), {len(prompts)} openings of {args.data}; real continuations: word "
          f"entropy {M.unigram_entropy(real):.2f}, rep-4 {M.rep_n(real, 4):.3f}")
    print("| sampler | steps | NFE | gen. PPL | word entropy | rep-4 | MAUVE [95% CI] | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for steps in args.steps:  # every sampler at a step count before the next: a stopped run compares them
        for name, options in samplers:
            t0 = time.perf_counter()
            gen, nfe = generate_samples(lm, prompts, cfg, {**options, "num_inference_steps": steps}, seed=args.seed,
                                        cache=cache / "samples" / f"{name}_{steps}.partial")
            system = System(name, prompts, [c for _, c in gen], [t for t, _ in gen])
            conts = system.continuations  # as compare scores them: uncut (the references are cut by words)
            row = {"sampler": name, "options": options, "steps": steps, "nfe": nfe,
                   "entropy": M.unigram_entropy(conts), "rep4": M.rep_n(conts, 4)}
            if judge is not None:
                row["gen_ppl"] = perplexity(judge_scores(judge, system))
            if real_features is not None:
                q = M.sentence_embeddings(conts)
                row["mauve"] = M.mauve_score(q, real_features, seed=args.seed)
                row["mauve_ci"] = list(M.mauve_interval(q, real_features, groups, groups, seed=args.seed,
                                                        point=row["mauve"]))
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            write_text_atomic(cache / "results.json", json.dumps({"model": args.model, "data": args.data,
                                                                  "rows": rows}, indent=1))
            mauve = (f"{row['mauve']:.3f} [{row['mauve_ci'][0]:.3f}, {row['mauve_ci'][1]:.3f}]"
                     if "mauve" in row else "-")
            ppl = f"{row['gen_ppl']:.1f}" if "gen_ppl" in row else "-"
            print(f"| {name} | {steps} | {nfe} | {ppl} | {row['entropy']:.2f} | {row['rep4']:.3f} | {mauve} | "
                  f"{row['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
