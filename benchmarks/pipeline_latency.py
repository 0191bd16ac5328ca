"""Sampling latency of a saved latent pipeline on one device and dtype, with the checker's quality.

    python benchmarks/pipeline_latency.py --model runs/syn/denoiser [--device cuda] [--dtype bf16]
        [--batch 1 16 256] [--samplers ddpm ddim dpm++ flow-euler pc] [--steps 8 16 32 64] [--repeats 3]

Prompts are the first sentences of held-out synthetic stories (seed 1, as in
benchmarks/latent_synthetic.py). For each sampler, step count and batch size:
one warm-up call, then the median wall-clock of --repeats calls (the device is
synchronised around each), in seconds per call and per sample. The largest
batch is also scored with the synthetic-story checker (well-formed /
consistent), so a dtype that hurts the samples shows next to the time it saves.
Run it once per device and dtype on the same pipeline folder and compare rows.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from latentlm.data.synthetic import generate_stories
from latentlm.eval.consistency import synthetic_probe
from latentlm.loading import load_pipeline
from latentlm.pipeline_latent_diffusion import make_scheduler

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a saved LatentDiffusionPipeline folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16, 256])
    p.add_argument("--samplers", nargs="+", default=["ddpm", "ddim", "dpm++", "flow-euler", "pc"])
    p.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = p.parse_args()
    for name in ("batch", "steps"):
        if min(getattr(args, name)) < 1:
            p.error(f"--{name} values must be positive integers")
    if args.repeats < 1 or args.new_tokens < 1:
        p.error("--repeats and --new-tokens must be positive integers")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pipe = load_pipeline(args.model).to(device, DTYPES[args.dtype])
    n_max = max(args.batch)
    prompts = [s.split()[0] for s in generate_stories(max(n_max, 50), seed=1)[:n_max]]
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "dtype": args.dtype, "torch": torch.__version__, "threads": torch.get_num_threads()}
    print(json.dumps(info), flush=True)
    rows = []
    for sampler in args.samplers:
        pc = sampler == "pc"
        pipe.scheduler = make_scheduler("ddim" if pc else sampler, pipe.denoiser)
        for steps in args.steps:
            for b in sorted(args.batch):
                opts = dict(max_new_tokens=args.new_tokens, num_inference_steps=steps, corrector_steps=int(pc))
                pipe(prompts[:b], generator=torch.Generator().manual_seed(0), **opts)  # warm-up
                times = []
                for r in range(args.repeats):
                    _sync(device)
                    t0 = time.perf_counter()
                    res = pipe(prompts[:b], generator=torch.Generator().manual_seed(r), **opts)
                    _sync(device)
                    times.append(time.perf_counter() - t0)
                s = statistics.median(times)
                row = {"sampler": "pc (ddim + langevin)" if pc else sampler, "steps": steps, "batch": b,
                       "nfe": res.nfe, "s_per_call": s, "ms_per_sample": 1000 * s / b}
                if b == n_max:
                    probe = synthetic_probe(prompts[:b], res.texts)
                    row |= {"well_formed": probe.well_formed, "consistent": probe.consistent}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n{info['device']}, {args.dtype}, torch {info['torch']}, {info['threads']} CPU threads")
    print("| sampler | steps | NFE | batch | s/call | ms/sample | well-formed | consistent |\n"
          "|---|---|---|---|---|---|---|---|")
    for r in rows:
        q = (f"{r['well_formed']:.3f} | {r['consistent']:.3f}" if "well_formed" in r else "- | -")
        print(f"| {r['sampler']} | {r['steps']} | {r['nfe']} | {r['batch']} | {r['s_per_call']:.4f} | "
              f"{r['ms_per_sample']:.2f} | {q} |")


if __name__ == "__main__":
    main()
