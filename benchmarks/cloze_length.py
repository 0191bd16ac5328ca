"""Length bias of cloze scoring: does the per-token score prefer the longer ending whichever is true?

    python benchmarks/cloze_length.py --model runs/ts/den_b4 --ar runs/ts/ar \
        --data ../shared/data/tinystories/valid.jsonl [--items 100] [--samples 4] [--window 64]

Cloze items as `latentlm compare` builds them (a story without its last sentence, its true last
sentence, another story's last sentence), kept where the two endings differ in length. For the AR
(exact) and the latent pipeline (its bound; with ``--window`` also scored in a window of that many
latents for every ending): accuracy, the share of items where the longer ending wins, and accuracy
split by whether the true ending is the longer one. A fair score has the two split accuracies
close (its choice follows the truth, not the length).
"""

from __future__ import annotations

import argparse
import json
import zlib

import torch

from latentlm.autoencoder.modeling_autoencoder import encode_prompts
from latentlm.data.readers import read_documents
from latentlm.diffusion.likelihood import default_t0, pipeline_nll_bound
from latentlm.eval import consistency as cons
from latentlm.eval.models import load_language_model


@torch.no_grad()
def bound_terms(pipe, prefix: list[int], rest: list[int], n_samples: int, gen: torch.Generator) -> dict[str, float]:
    """The bound of ``rest`` given ``prefix`` split by where its nats go (one ending, the same estimator
    as :func:`~latentlm.diffusion.likelihood.latent_bound`): the decoder's nats on the text's tokens and on
    the padding after its end-of-text, the diffusion nats of the first latent, of the last latent (the
    one holding the end-of-text), of the latents between, and of whole-padding latents after it (a
    block model's last block)."""
    ae, den, tok = pipe.autoencoder, pipe.denoiser, pipe.tokenizer
    k, sched, block = ae.config.tokens_per_latent, den.schedule, den.config.block_size
    n = -(-len(rest) // k)
    n_all = n if block is None else -(-n // block) * block
    cont = torch.full((1, n_all * k), tok.pad_token_id, dtype=torch.long)
    cont[0, : len(rest)] = torch.tensor(rest)
    z0 = ae.encode(cont, (cont != tok.pad_token_id).long() | (torch.arange(n_all * k) < len(rest)).long()).double()
    ctx, ctx_mask = encode_prompts(ae, [prefix], tok.pad_token_id, "cpu")
    t0 = default_t0(sched)
    a0, s0 = (float(v) for v in sched.alpha_sigma(torch.tensor(t0)))
    per = n_all * k if block is None else block * k
    ce = torch.zeros(n_all * k, dtype=torch.float64)
    for _ in range(n_samples):
        z = (a0 * z0 + s0 * torch.randn(z0.shape, generator=gen, dtype=torch.float64)) / a0
        logits = ae.decode(z.reshape(-1, per // k, z.shape[-1]).float()).float().reshape(n_all * k, -1)
        ce += torch.nn.functional.cross_entropy(logits, cont[0], reduction="none").double() / n_samples
    lam_hi, lam_lo = float(sched.log_snr(torch.tensor(t0))), float(sched.log_snr(torch.tensor(1.0)))
    n_blocks = 1 if block is None else n_all // block
    diff = torch.zeros(n_all, dtype=torch.float64)
    offset = torch.rand(n_blocks, generator=gen).double()
    extra = {} if block is None else {"clean": z0.float()}
    for j in range(n_samples):
        lam = (lam_lo + (lam_hi - lam_lo) * ((j + offset) / n_samples % 1))[None]  # (1, blocks)
        t = sched.t_of_log_snr(lam)
        a, s = (v.repeat_interleave(n_all // n_blocks, 1)[..., None] for v in sched.alpha_sigma(t))
        z_t = a * z0 + s * torch.randn(z0.shape, generator=gen, dtype=torch.float64)
        x0 = pipe.predict_x0(z_t.float(), (t[:, 0] if block is None else t).float(), ctx, ctx_mask, **extra).double()
        w = lam.exp().repeat_interleave(n_all // n_blocks, 1)[0]
        diff += 0.5 * (lam_hi - lam_lo) * w * ((z0 - x0) ** 2).sum(-1)[0] / n_samples
    return {"rec_text": float(ce[: len(rest)].sum()), "rec_pad": float(ce[len(rest):].sum()),
            "diff_first": float(diff[0]), "diff_last": float(diff[n - 1]) if n > 1 else 0.0,
            "diff_between": float(diff[1 : n - 1].sum()), "diff_pad_latents": float(diff[n:].sum()),
            "tokens": len(rest), "latents": n}


def print_terms(lm, items, n_tokens, samples: int) -> None:
    """Mean nats of each bound term for the shorter and the longer ending of each item, and the cloze
    scores of sums of terms: the bound as it is (no padding after the end-of-text), the bound with the
    padding's decoder nats added (how it was scored before), and each without the last latent's
    diffusion nats (the latent that holds the end-of-text)."""
    tok, gen = lm.tokenizer, torch.Generator().manual_seed(0)
    by, pairs = {"shorter": [], "longer": []}, []
    for ctx, true, false in items:
        terms = []
        for ending in (true, false):
            ids = tok(ctx + " " + ending, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            p = n_tokens(ctx)
            terms.append(bound_terms(lm.pipe, ids[:p], ids[p:], samples, gen))
        pairs.append(terms)
        short, long = sorted(terms, key=lambda r: r["tokens"])
        by["shorter"].append(short)
        by["longer"].append(long)
    keys = list(by["shorter"][0])
    print("\n| ending | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for name, rows in by.items():
        print(f"| {name} | " + " | ".join(f"{sum(r[k] for r in rows) / len(rows):.2f}" for k in keys) + " |")
    base = ("rec_text", "diff_first", "diff_between", "diff_last", "diff_pad_latents")
    variants = {"bound (text and end-of-text decoded)": base, "bound + padding's decoder nats": (*base, "rec_pad"),
                "bound - last latent's diffusion nats": tuple(k for k in base if k != "diff_last")}
    print("\n| per-token score | accuracy | longer ending wins | accuracy, true longer | accuracy, true shorter |\n"
          "|---|---|---|---|---|")
    for name, ks in variants.items():
        rows = []
        for true, false in pairs:
            score = [sum(r[k] for k in ks) / r["tokens"] for r in (true, false)]
            rows.append((score[0] < score[1], true["tokens"] > false["tokens"]))
        split = [[c for c, lg in rows if lg == want] for want in (True, False)]
        print(f"| {name} | {sum(c for c, _ in rows) / len(rows):.2f} | {sum(c == lg for c, lg in rows) / len(rows):.2f} | "
              f"{sum(split[0]) / max(1, len(split[0])):.2f} | {sum(split[1]) / max(1, len(split[1])):.2f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--ar")
    p.add_argument("--data", required=True)
    p.add_argument("--items", type=int, default=100)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--window", type=int, default=0, help="also score every ending in this many latents")
    p.add_argument("--terms", action="store_true", help="also print where the latent bound's nats go")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--same-seed", action="store_true",
                   help="score every ending from the same seed (not one seed per story, as compare does)")
    p.add_argument("--no-ar", action="store_true", help="leave the AR row out (then --ar is not needed)")
    args = p.parse_args()
    docs = read_documents([args.data])
    if not args.ar and not args.no_ar:
        p.error("--ar DIR is needed (or --no-ar)")
    lm = load_language_model(args.model, "latent")
    ar = None if args.no_ar else load_language_model(args.ar, "ar")
    tok = lm.tokenizer
    limit = lm.context - 1

    def n_tokens(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    items = [it for it in cons.cloze_items(docs, 4 * args.items, seed=0)
             if max(n_tokens(it[0] + " " + e) for e in it[1:]) <= limit and n_tokens(it[1]) != n_tokens(it[2])]
    items = items[: args.items]

    def latent(window: int):
        def score(ctx: str, ending: str) -> float:
            ids = tok(ctx + " " + ending, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            seed = args.seed if args.same_seed else args.seed + zlib.crc32(ctx.encode("utf-8"))  # as compare
            nats, _, count = pipeline_nll_bound(lm.pipe, [ids], prefix_len=n_tokens(ctx), n_samples=args.samples,
                                                min_latents=window, seed=seed)
            return nats[0] / count[0]
        return score

    def exact(ctx: str, ending: str) -> float:
        r = ar.nll([ctx + " " + ending], prefix_len=n_tokens(ctx))
        return r.per_text[0] / r.per_text_tokens[0]

    scorers = {"latent (bound)": latent(0)} if ar is None else {"AR (exact)": exact, "latent (bound)": latent(0)}
    if args.window:
        scorers[f"latent (bound, {args.window}-latent window)"] = latent(args.window)
    print("| model | items | accuracy | longer ending wins | accuracy, true longer | accuracy, true shorter |\n"
          "|---|---|---|---|---|---|")
    for name, score in scorers.items():
        rows = []
        for ctx, true, false in items:
            correct = score(ctx, true) < score(ctx, false)
            longer = n_tokens(true) > n_tokens(false)
            rows.append((correct, longer))
        split = [[c for c, lg in rows if lg == want] for want in (True, False)]
        r = {"model": name, "items": len(rows), "accuracy": sum(c for c, _ in rows) / len(rows),
             "longer_wins": sum(c == lg for c, lg in rows) / len(rows),
             "acc_true_longer": sum(split[0]) / max(1, len(split[0])),
             "acc_true_shorter": sum(split[1]) / max(1, len(split[1]))}
        print(f"| {name} | {r['items']} | {r['accuracy']:.2f} | {r['longer_wins']:.2f} | {r['acc_true_longer']:.2f} | "
              f"{r['acc_true_shorter']:.2f} |  {json.dumps(r)}", flush=True)
    if args.terms:
        print_terms(lm, items, n_tokens, args.samples)


if __name__ == "__main__":
    main()
