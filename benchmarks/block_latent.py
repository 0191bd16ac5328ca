"""Block-causal latent diffusion against the AR on real text: block size x sampling mode x steps, quality
and latency.

    python benchmarks/block_latent.py --model b4=runs/den_b4 [--model b1=runs/den_b1 --model full=runs/den ...] \
        --ar runs/ar --judge runs/judge --data ../shared/data/tinystories/valid.jsonl [--prompts 32] \
        [--steps 8 16 32] [--modes block-ar staggered parallel] [--window-blocks 4 16] [--bound-texts 64] \
        [--decoder-temperatures 0 1] [--denoising-ends 0.5 1] [--project-below 0 0.3] [--guidance-scales 1 2] \
        [--bound-samples 4] [--train ../shared/data/tinystories/train.jsonl] [--cache runs/block_valid.json]

For each latent pipeline (a block-causal one in every mode, one with block_size None in parallel mode
only), each mode, step count, decoder temperature (``T=`` in the row's name; 0, the most likely
tokens, unnamed), denoising end (``end=``; 1, every step, unnamed) and, in parallel mode, the time below
which the clean estimate is projected onto real codes (``proj=``; 0, never, unnamed), classifier-free
guidance scale (``w=``; 1, none, unnamed), and for the AR (its KV cache, temperature 1):
the continuations of ``--prompts`` openings (``--new-tokens`` new tokens, the batch of all openings)
scored by the judge (generation perplexity), MAUVE against the real continuations (the real-text row:
other held-out stories, the data-vs-data ceiling), unigram entropy, rep-4 and, with ``--train`` (the name
lexicon), entity persistence: the share of name mentions that are the opening's characters; then the latency per sample
at batch 1 for 128 and 1,024 new tokens (parallel mode: only up to the autoencoder's window); then
the likelihood bound (the chain over blocks for a block model) against the AR's exact nats/token on
the first ``--bound-texts`` documents. Prints JSON rows as they come and markdown tables at the end.

With ``--cache FILE`` every measured row is kept in FILE (rewritten atomically after each), and a rerun
with the same settings reuses it: an interrupted sweep resumes, and a later run with more models only
measures theirs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from latentlm.data.readers import read_documents
from latentlm.errors import DataError
from latentlm.eval import consistency as cons
from latentlm.eval import metrics as M
from latentlm.eval.compare import (
    CompareConfig,
    System,
    cut_references,
    judge_scores,
    mauve_references,
    openings,
    perplexity,
)
from latentlm.eval.models import load_language_model
from latentlm.files import write_text_atomic
from latentlm.pipeline_latent_diffusion import window_error


class RowCache:
    """The rows already measured with these settings, keyed by what they measure; ``None`` keeps nothing."""

    def __init__(self, path: str | None, settings: dict):
        self.path, self.settings, self.rows = path, settings, {}
        if path and os.path.exists(path):
            try:
                with open(path) as f:
                    saved = json.load(f)
                saved["settings"], saved["rows"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise SystemExit(f"{path} is not a row cache of this benchmark ({e}): pass another --cache file") from e
            if saved["settings"] != settings:
                raise SystemExit(f"{path} holds rows measured with {saved['settings']}, not {settings}: "
                                 "pass another --cache file or rerun with its settings")
            self.rows = saved["rows"]

    def get(self, *key) -> dict | None:
        return self.rows.get(json.dumps(key))

    def put(self, row: dict, *key) -> dict:
        self.rows[json.dumps(key)] = row
        if self.path:
            write_text_atomic(self.path, json.dumps({"settings": self.settings, "rows": self.rows}))
        return row


def _generate(lm, prompts, new_tokens, mode, steps, window_blocks, seed=0, decoder_temperature=0.0, denoising_end=1.0,
              project_below=0.0, guidance_scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    if lm.kind == "ar":
        return lm.generate(prompts, new_tokens, generator=gen)
    return lm.generate(prompts, new_tokens, generator=gen, num_inference_steps=steps, mode=mode, window_blocks=window_blocks,
                       decoder_temperature=decoder_temperature, denoising_end=denoising_end,
                       project_below=project_below, guidance_scale=guidance_scale)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, action="append",
                   help="NAME=DIR of a latent pipeline (repeat for several block sizes); a bare DIR is named latent")
    p.add_argument("--ar", required=True)
    p.add_argument("--judge", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--modes", nargs="+", default=["block-ar", "staggered", "parallel"])
    p.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--window-blocks", type=int, nargs="+", default=[4],
                   help="blocks in flight in staggered mode: a row for each")
    p.add_argument("--decoder-temperatures", type=float, nargs="+", default=[0.0],
                   help="latent rows for each: 0 decodes the most likely tokens, T > 0 draws at temperature T")
    p.add_argument("--denoising-ends", type=float, nargs="+", default=[1.0],
                   help="latent rows for each: the fraction of the steps run (below 1: decoded from the last clean "
                        "estimate)")
    p.add_argument("--project-below", type=float, nargs="+", default=[0.0],
                   help="parallel mode: project the clean estimate onto real codes below these times (0: never)")
    p.add_argument("--guidance-scales", type=float, nargs="+", default=[1.0],
                   help="classifier-free guidance scales (1: none)")
    p.add_argument("--latency-tokens", type=int, nargs="*", default=[128, 1024],
                   help="new tokens of the batch-1 latency rows; none: no latency rows")
    p.add_argument("--latency-steps", type=int, default=16)
    p.add_argument("--bound-texts", type=int, default=64)
    p.add_argument("--bound-samples", type=int, default=4)
    p.add_argument("--train", help="training texts: the name lexicon of entity persistence (skipped without)")
    p.add_argument("--cache", help="JSON file of measured rows: reused by a rerun with the same settings")
    args = p.parse_args()
    cache = RowCache(args.cache, {k: getattr(args, k) for k in
                                  ("data", "prompts", "new_tokens", "latency_steps", "bound_texts", "bound_samples",
                                   "train")} | {"ar": os.path.abspath(args.ar), "judge": os.path.abspath(args.judge)})
    docs = read_documents([args.data])
    cfg = CompareConfig(prompts=args.prompts, max_new_tokens=args.new_tokens)
    pairs = openings(docs, args.prompts, cfg, synthetic=False)
    prompts = [o for o, _ in pairs]
    lms, folders = {}, {"AR": os.path.abspath(args.ar)}  # a cached row is keyed by its model's folder
    for spec in args.model:
        name, _, folder = spec.rpartition("=")
        lms[name or "latent"] = load_language_model(folder, name or "latent")
        folders[name or "latent"] = os.path.abspath(folder)
    ar = load_language_model(args.ar, "ar")
    judge = load_language_model(args.judge, "judge")
    tok = next(iter(lms.values())).tokenizer

    def modes_of(lm) -> list[str]:
        return args.modes if lm.pipe.denoiser.config.block_size is not None else ["parallel"]

    def windows_of(lm, mode: str) -> list[int | None]:
        """The staggered windows whose blocks fit the denoiser's latents at once (8 blocks of 8 in 64)."""
        if mode != "staggered":
            return [None]
        cfg = lm.pipe.denoiser.config
        fit = [w for w in args.window_blocks if window_error(w, cfg.block_size, cfg.max_latents) is None]
        for w in sorted(set(args.window_blocks) - set(fit)):
            print(f"skipped: {window_error(w, cfg.block_size, cfg.max_latents)}", file=sys.stderr)
        return fit

    real = System("real", prompts, cut_references([c for _, c in pairs], cfg))
    feats_real, feats_ceiling, why = mauve_references(docs, pairs, real.continuations, cfg,
                                                      read_documents([args.train]) if args.train else ())
    if feats_ceiling is None:
        raise DataError(why)
    names = cons.name_lexicon(read_documents([args.train])) if args.train else set()

    def scores(s: System, feats) -> dict:
        row = {"gen_ppl": perplexity(judge_scores(judge, s)), "mauve": M.mauve_score(feats, feats_real, seed=cfg.seed),
               "entropy": M.unigram_entropy(s.continuations), "rep4": M.rep_n(s.continuations, 4)}
        if names:
            try:
                row["known_names"] = cons.entity_persistence(s.prompts, s.continuations, names).known_share
            except DataError:  # no opening names a character, or no continuation mentions one
                row["known_names"] = None
        return row

    rows = [cache.get("real") or cache.put({"model": "real text", **scores(real, feats_ceiling)}, "real")]
    print(json.dumps(rows[-1]), flush=True)
    runs = [("AR", ar, "ar", None, None, 0.0, 1.0, 0.0, 1.0)] + [
        (name, lm, mode, steps, window, temp, end, proj, w)
        for name, lm in lms.items() for mode in modes_of(lm) for steps in args.steps
        for window in windows_of(lm, mode) for temp in args.decoder_temperatures
        for end in args.denoising_ends for proj in args.project_below if mode == "parallel" or not proj
        for w in args.guidance_scales]
    samples = {}
    for name, model, mode, steps, window, temp, end, proj, w in runs:
        label = "AR" if mode == "ar" else (f"{name} {mode}" + (f" T={temp:g}" if temp else "")
                                           + (f" end={end:g}" if end < 1 else "") + (f" proj={proj:g}" if proj else "")
                                           + (f" w={w:g}" if w != 1 else ""))
        key = ("generate", label, steps, window, folders[name])
        if (row := cache.get(*key)) is None:
            t0 = time.perf_counter()
            out = _generate(model, prompts, args.new_tokens, mode, steps, window or 1, decoder_temperature=temp,
                            denoising_end=end, project_below=proj, guidance_scale=w)
            dt = time.perf_counter() - t0
            s = System(mode, prompts, out.continuations, out.texts)
            row = cache.put({"model": label, "steps": steps, "window": window, "nfe": out.nfe,
                             "s_per_sample": dt / len(prompts), **scores(s, M.sentence_embeddings(s.continuations)),
                             "texts": out.texts}, *key)
        rows.append({k: v for k, v in row.items() if k != "texts"})
        samples[(label, steps)] = row["texts"]
        print(json.dumps(rows[-1]), flush=True)
    latency = []
    for n in args.latency_tokens:
        for name, model, mode, window in [("AR", ar, "ar", None)] + [
                (k, lm, m, w) for k, lm in lms.items() for m in modes_of(lm)
                for w in windows_of(lm, m)]:
            if mode == "parallel" and n > model.pipe.autoencoder.config.max_seq_len:
                continue
            key = ("latency", name, mode, window, n, folders[name])
            if (row := cache.get(*key)) is None:
                _generate(model, prompts[:1], 16, mode, 2, window or 1)  # warm-up
                t0 = time.perf_counter()
                out = _generate(model, prompts[:1], n, mode, args.latency_steps, window or 1)
                row = cache.put({"model": "AR" if mode == "ar" else f"{name} {mode}", "new_tokens": n,
                                 "window": window, "steps": None if mode == "ar" else args.latency_steps,
                                 "nfe": out.nfe,
                                 "seconds": time.perf_counter() - t0,
                                 "tokens_out": len(tok(out.continuations[0], add_special_tokens=False)["input_ids"])},
                                *key)
            latency.append(row)
            print(json.dumps(latency[-1]), flush=True)
    bounds = {}
    if args.bound_texts:
        texts = docs[: args.bound_texts]
        scored = [("AR (exact)", ar, {}, folders["AR"])] + [
            (f"{k} (bound)", lm, {"n_samples": args.bound_samples}, folders[k]) for k, lm in lms.items()]
        for name, model, kw, folder in scored:
            key = ("bound", name, folder)
            if (row := cache.get(*key)) is None:
                t0 = time.perf_counter()
                r = model.nll(texts, **kw)
                row = cache.put({"nats_per_token": r.nats_per_token, "stderr": r.stderr, "texts": len(texts),
                                 "tokens": r.n_tokens, "seconds": time.perf_counter() - t0}, *key)
            bounds[name] = row
            print(json.dumps({name: bounds[name]}), flush=True)
    best = min((r for r in rows if r.get("nfe") and r["model"] != "AR"), key=lambda r: r["gen_ppl"])
    print(f"\nsamples of {best['model']} ({best['steps']} steps) and the AR, same openings:\n")
    for a, b in list(zip(samples[(best["model"], best["steps"])], samples[("AR", None)]))[:10]:
        print(f"- latent: {a}\n  AR:     {b}\n")
    print("| model | mode steps / window | NFE | s/sample (batch) | judge gen. PPL | MAUVE | entropy | rep-4 | "
          "known names |\n|---|---|---|---|---|---|---|---|---|")

    def fmt(x, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    for r in rows:
        sw = "-" if r.get("steps") is None else f"{r['steps']}" + (f" / {r['window']}" if r.get("window") else "")
        print(f"| {r['model']} | {sw} | {fmt(r.get('nfe'), 'd')} | {fmt(r.get('s_per_sample'), '.3f')} | "
              f"{r['gen_ppl']:.2f} | {r['mauve']:.3f} | {r['entropy']:.2f} | {r['rep4']:.3f} | "
              f"{fmt(r.get('known_names'), '.3f')} |")
    if latency:
        print("\n| model | window | new tokens asked | tokens produced | NFE | s per sample (batch 1) | ms per token |"
              "\n|---|---|---|---|---|---|---|")
    for r in latency:
        print(f"| {r['model']} | {fmt(r.get('window'), 'd')} | {r['new_tokens']} | {r['tokens_out']} | {r['nfe']} | "
              f"{r['seconds']:.2f} | {1000 * r['seconds'] / max(r['tokens_out'], 1):.1f} |")
    for name, b in bounds.items():
        print(f"\n{name}: {b['nats_per_token']:.4f} +- {b['stderr']:.4f} nats/token on {b['texts']} texts")


if __name__ == "__main__":
    main()
