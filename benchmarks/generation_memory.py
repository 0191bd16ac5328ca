"""Peak memory of generation against batch size and length, one fresh process per measurement.

    python benchmarks/generation_memory.py --model latent=DIR --model ar=DIR [--batches 1 16 64 256]
        [--lengths 64 128]

Prints a table: model, batch, new tokens, peak resident memory of the process
(MiB, ``ru_maxrss``) and its growth over the loaded model. Generation runs in
chunks (``GENERATION_CHUNK`` prompts for AR/MDLM, ``DECODE_CHUNK`` samples for
the latent decoder), so the growth flattens beyond a chunk instead of rising
with the batch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, torch
from latentlm.eval.models import load_language_model
folder, batch, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(2)
lm = load_language_model(folder)
lm.generate(["once upon a time"], 8, generator=torch.Generator().manual_seed(0))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
lm.generate(["once upon a time"] * batch, n, generator=torch.Generator().manual_seed(0))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"base_mib": base, "peak_mib": peak}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=DIR")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 128])
    args = p.parse_args()
    print("| model | batch | new tokens | peak RSS (MiB) | growth over loaded model (MiB) |\n|---|---|---|---|---|")
    for spec in args.model:
        name, _, folder = spec.partition("=")
        for n in args.lengths:
            for b in args.batches:
                proc = subprocess.run([sys.executable, "-c", CHILD, folder, str(b), str(n)], capture_output=True,
                                      text=True, timeout=1200)
                if proc.returncode != 0:
                    print(f"| {name} | {b} | {n} | failed: {proc.stderr.strip().splitlines()[-1]} | |", flush=True)
                    continue
                r = json.loads(proc.stdout.splitlines()[-1])
                print(f"| {name} | {b} | {n} | {r['peak_mib']:.0f} | {r['peak_mib'] - r['base_mib']:.0f} |",
                      flush=True)


if __name__ == "__main__":
    main()
