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

from latentlm.data.readers import read_documents
from latentlm.diffusion.likelihood import pipeline_nll_bound
from latentlm.eval import consistency as cons
from latentlm.eval.models import load_language_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--ar", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--items", type=int, default=100)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--window", type=int, default=0, help="also score every ending in this many latents")
    args = p.parse_args()
    docs = read_documents([args.data])
    lm, ar = load_language_model(args.model, "latent"), load_language_model(args.ar, "ar")
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
            nats, _, count = pipeline_nll_bound(lm.pipe, [ids], prefix_len=n_tokens(ctx), n_samples=args.samples,
                                                min_latents=window)
            return nats[0] / count[0]
        return score

    def exact(ctx: str, ending: str) -> float:
        r = ar.nll([ctx + " " + ending], prefix_len=n_tokens(ctx))
        return r.per_text[0] / r.per_text_tokens[0]

    scorers = {"AR (exact)": exact, "latent (bound)": latent(0)}
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


if __name__ == "__main__":
    main()
