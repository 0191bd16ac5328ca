"""At which noise levels does a latent pipeline lose the text? The per-t map, then the sampling trace.

    python benchmarks/x0_entropy.py --model runs/ts/denoiser --data ../shared/data/tinystories/valid.jsonl \
        [--prompts 64] [--steps 32 128] [--new-tokens 128] [--grid 0.02 0.05 ... 0.95]

The map (latentlm.eval.per_t): real continuations of the openings noised to each t of ``--grid``, and
the token accuracy and word entropy of the decoded rescaled noisy latent and of the denoiser's clean
estimate (without and with self-conditioning), next to the training-time density there. The trace:
the unigram entropy of the decoded clean estimate after each sampling step (parallel mode), one JSON
line per step count with (step, timestep, entropy in bits).
"""

from __future__ import annotations

import argparse
import json

import torch

from latentlm import LatentDiffusionPipeline
from latentlm.data.readers import read_documents
from latentlm.eval import metrics as M
from latentlm.eval.compare import CompareConfig, openings
from latentlm.eval.per_t import DEFAULT_GRID, map_table, per_t_map


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a saved LatentDiffusionPipeline folder")
    p.add_argument("--data", required=True, help="held-out texts: the openings and real continuations")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--steps", type=int, nargs="+", default=[32, 128])
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--grid", type=float, nargs="+", default=list(DEFAULT_GRID), help="times of the per-t map")
    args = p.parse_args()
    pipe = LatentDiffusionPipeline.from_pretrained(args.model)
    tok = pipe.tokenizer
    pairs = openings(read_documents([args.data]), args.prompts,
                     CompareConfig(prompts=args.prompts, max_new_tokens=args.new_tokens), synthetic=False)
    real = [tok.decode(tok(c, add_special_tokens=False)["input_ids"][: args.new_tokens]) for _, c in pairs]
    print(json.dumps({"real continuations": M.unigram_entropy(real)}), flush=True)
    rows = per_t_map(pipe, [o for o, _ in pairs], [c for _, c in pairs], args.grid, max_new_tokens=args.new_tokens)
    print(map_table(rows, M.unigram_entropy(real)), flush=True)
    print(json.dumps({"per_t": [r.__dict__ for r in rows]}), flush=True)

    def texts(ids: torch.Tensor) -> list[str]:
        return [tok.decode([t for t in row if t != tok.pad_token_id]) for row in ids.tolist()]

    for steps in args.steps:
        trace = []

        def record(pipe, i, timestep, tensors, trace=trace):
            trace.append((i, float(timestep), M.unigram_entropy(texts(pipe.decode(tensors["x0"].float(),
                                                                                  args.new_tokens)))))
            return {}

        out = pipe([o for o, _ in pairs], max_new_tokens=args.new_tokens, num_inference_steps=steps,
                   mode="parallel", generator=torch.Generator().manual_seed(0), callback_on_step_end=record,
                   callback_on_step_end_tensor_inputs=["x0"])
        print(json.dumps({"steps": steps, "final sample": M.unigram_entropy(texts(out.sequences)),
                          "x0 after each step (step, timestep, bits)": trace}), flush=True)


if __name__ == "__main__":
    main()
