"""Benchmark: tokens/s of latentlm's training loop against a plain PyTorch loop.

Same model (CausalLM, 6 layers, width 256, vocab 4096), same batches (32 x 128
tokens), same optimizer/schedule/clipping, in fp32 and bf16 autocast. Prints the
loop overhead (target: at most 10%) and the bf16/fp32 speed ratio.

    python benchmarks/bench_training_loop.py [--steps 30] [--warmup 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from diffusers.optimization import get_scheduler

from latentlm.baselines.autoregressive import CausalLM, ar_loss
from latentlm.training import TrainConfig, train


class RandomTokens:
    def __init__(self, batch=32, seq=128, vocab=4096):
        self.batch_size, self.seq, self.vocab = batch, seq, vocab

    def batch(self, step):
        g = torch.Generator().manual_seed(step)
        return {"input_ids": torch.randint(3, self.vocab, (self.batch_size, self.seq), generator=g)}


def model():
    torch.manual_seed(0)
    return CausalLM(vocab_size=4096, dim=256, depth=6, n_heads=4, max_seq_len=128)


def plain_loop(steps: int, warmup: int, bf16: bool) -> float:
    m, data = model(), RandomTokens()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)
    sched = get_scheduler("cosine", opt, num_warmup_steps=10, num_training_steps=steps)
    m.train()
    for step in range(steps):
        if step == warmup:
            t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = ar_loss(m, data.batch(step)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return (steps - warmup) * 32 * 128 / (time.perf_counter() - t0)


def latentlm_loop(steps: int, warmup: int, bf16: bool) -> float:
    cfg = TrainConfig(steps=steps, batch_size=32, lr=3e-4, warmup_steps=10,
                      mixed_precision="bf16" if bf16 else "no", log_every=warmup)
    with tempfile.TemporaryDirectory() as out:
        r = train(model(), ar_loss, RandomTokens(), cfg, out, export=None, progress=False)
    # tokens/s between log points: skip the first window (warm-up), average the rest
    rates = [h["tokens_per_s"] for h in r.history[1:]]
    tokens = sum((h["step"] - p["step"]) * 32 * 128 for p, h in zip(r.history, r.history[1:]))
    seconds = sum((h["step"] - p["step"]) * 32 * 128 / rate for p, h, rate in zip(r.history, r.history[1:], rates))
    return tokens / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    args = p.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch 32x128, 6 layers x 256")
    rows = {}
    for bf16 in (False, True):
        for name, fn in (("plain", plain_loop), ("latentlm", latentlm_loop)):
            rows[name, bf16] = fn(args.steps, args.warmup, bf16)
            print(f"{name:9s} {'bf16' if bf16 else 'fp32'}: {rows[name, bf16]:8.0f} tokens/s", flush=True)
    print("\n| precision | plain tok/s | latentlm tok/s | loop overhead |")
    print("|---|---|---|---|")
    for bf16 in (False, True):
        plain, ours = rows["plain", bf16], rows["latentlm", bf16]
        print(f"| {'bf16' if bf16 else 'fp32'} | {plain:.0f} | {ours:.0f} | {100 * (plain / ours - 1):+.1f}% |")
    print(f"\nbf16/fp32 speed ratio: plain {rows['plain', True] / rows['plain', False]:.2f}x, "
          f"latentlm {rows['latentlm', True] / rows['latentlm', False]:.2f}x")


if __name__ == "__main__":
    main()
