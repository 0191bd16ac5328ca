"""What each preset's models cost to train: parameters, training FLOPs per token and in all, and each
diffusion model's ratio to the AR's (the compute rule: at most 2x; the latent model counts its
autoencoder's run with its denoiser's).

    python benchmarks/compute.py [--presets cpu-tiny cpu-small gpu-base] [--set KIND.SECTION.KEY=VALUE ...]

FLOPs are counted by ``latentlm.cost`` on one training step of one row at each run's shapes, without
computing the products it counts (the three presets in under a minute on a 2-core CPU). ``--set`` changes one setting of one kind (e.g. a deeper
denoiser: ``--set denoiser.model.depth=8``) to size a model against the rule before training it.
"""

from __future__ import annotations

import argparse
import sys

from latentlm.config import split_scoped_overrides
from latentlm.cost import preset_costs
from latentlm.errors import LatentLMError

VOCAB = {"cpu-tiny": 800, "cpu-small": 4096, "gpu-base": 4096}  # the vocabularies the presets are for


def table(preset: str, vocab: int, overrides: dict[str, list[str]]) -> str:
    costs = preset_costs(preset, vocab, overrides)
    ar = costs["ar"].total_flops
    rows = [f"`{preset}` (vocabulary {vocab:,}):", "",
            "| run | trained params | frozen params | training MFLOPs/token | tokens | training PFLOPs | x the AR's |",
            "|---|---|---|---|---|---|---|"]
    for kind, c in costs.items():
        ratio = c.total_flops / ar
        if kind == "denoiser":
            ratio = (c.total_flops + costs["autoencoder"].total_flops) / ar
        ratio_s = f"{ratio:.2f}" + (" (with the autoencoder)" if kind == "denoiser" else "")
        rows.append(f"| {kind} | {c.trained_params:,} | {c.frozen_params:,} | {c.flops_per_token / 1e6:.1f} | "
                    f"{c.tokens:,} | {c.total_flops / 1e15:.3f} | {'-' if kind == 'autoencoder' else ratio_s} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=list(VOCAB), choices=list(VOCAB))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KIND.SECTION.KEY=VALUE")
    args = p.parse_args(argv)
    try:
        overrides = split_scoped_overrides(args.overrides, "KIND")
        for preset in args.presets:
            print(table(preset, VOCAB[preset], overrides))
    except LatentLMError as e:
        print(f"compute: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
