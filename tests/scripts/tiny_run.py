"""A tiny deterministic training run, used by tests in subprocesses (torchrun, kills).

usage: tiny_run.py OUT_DIR STEPS [--save-every N] [--kill-on-save K] [--slow] [--mp no|bf16]
Prints one JSON line with the step, the per-step losses and whether it was interrupted.
"""

import argparse
import json
import os
import signal
import time

import torch

from latentlm.baselines.autoregressive import CausalLM, ar_loss
from latentlm.training import LossOutput, TrainConfig, train


class RandomTokens:
    """Global batch of step s: seeded random tokens (deterministic, resumable)."""

    def __init__(self, batch_size=8, seq_len=16, vocab=40):
        self.batch_size, self.seq_len, self.vocab = batch_size, seq_len, vocab

    def batch(self, step):
        g = torch.Generator().manual_seed(1000 + step)
        return {"input_ids": torch.randint(3, self.vocab, (self.batch_size, self.seq_len), generator=g)}


def tiny_model():
    torch.manual_seed(0)
    return CausalLM(vocab_size=40, dim=32, depth=2, n_heads=4, max_seq_len=32)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("steps", type=int)
    p.add_argument("--save-every", type=int, default=0)
    p.add_argument("--kill-on-save", type=int, default=0, help="SIGKILL in the middle of the K-th checkpoint write")
    p.add_argument("--slow", action="store_true", help="sleep in every step (for signal tests)")
    p.add_argument("--mp", default="no")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    if args.kill_on_save:
        import accelerate

        original = accelerate.Accelerator.save_state
        calls = {"n": 0}

        def save_then_die(self, output_dir=None, **kw):
            calls["n"] += 1
            result = original(self, output_dir, **kw)
            if calls["n"] == args.kill_on_save:
                weights = [f for f in os.listdir(output_dir) if f.endswith(".safetensors")][0]
                path = os.path.join(output_dir, weights)
                with open(path, "r+b") as f:  # half-written weights, then death
                    f.truncate(os.path.getsize(path) // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        accelerate.Accelerator.save_state = save_then_die

    def loss_fn(model, batch):
        if args.slow:
            time.sleep(0.05)
        return ar_loss(model, batch)

    cfg = TrainConfig(steps=args.steps, batch_size=8, lr=1e-2, warmup_steps=2, mixed_precision=args.mp,
                      save_every=args.save_every, log_every=1, ema_decay=0.5)
    r = train(tiny_model(), loss_fn, RandomTokens(), cfg, args.out, progress=False)
    result = json.dumps({"step": r.step, "losses": [h["loss"] for h in r.history], "interrupted": r.interrupted})
    with open(os.path.join(args.out, f"result-rank{os.environ.get('RANK', '0')}.json"), "w") as f:
        f.write(result)  # one file per rank: ranks share stdout, lines could interleave
    print(result, flush=True)


if __name__ == "__main__":
    assert LossOutput  # keep the import: scripts document the loss interface
    main()
