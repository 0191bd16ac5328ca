"""Speed of generation: NFE, latency at batch 1, throughput at batch 16 and FLOPs per sample.

Every model runs on the same machine in the same process, one after another,
after a warm-up call. FLOPs are counted by ``torch.utils.flop_counter`` on one
batch-1 generation (matrix multiplications and attention, on the CPU too: :mod:`latentlm.flops`; elementwise work is
not counted), so they include every network evaluation the sampler makes.
A generator that can stop at end-of-text (``stop_at_eot``: AR, PTP, the latent
block modes) is asked to go on, so that every row times the length asked.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import asdict, dataclass

import torch

from latentlm.device import synchronize
from latentlm.errors import InputError
from latentlm.flops import flop_counter


@dataclass
class SpeedRow:
    model: str
    new_tokens: int
    nfe: int | None = None
    latency_s: float | None = None  # one sample, batch 1
    tokens_per_s: float | None = None  # batch of ``batch`` samples
    gflops_per_sample: float | None = None
    skipped: str | None = None  # why the row has no numbers
    tokens_made: int | None = None  # new tokens the timed sample made: fewer than new_tokens when it ended early


def measure_speed(lm, name: str, prompt: str, lengths: list[int], batch: int = 16, options: dict | None = None,
                  seed: int = 0) -> list[SpeedRow]:
    """One :class:`SpeedRow` per length; lengths beyond the model's context are reported as skipped."""
    options = dict(options or {})
    fixed = "stop_at_eot" in inspect.signature(lm.generate).parameters
    if fixed:  # every sample runs to the asked length
        options["stop_at_eot"] = False
    rows = []
    for n in lengths:
        try:
            g = torch.Generator().manual_seed(seed)
            lm.generate([prompt], n, generator=g, **options)  # warm-up (and the context check)
        except InputError as e:
            rows.append(SpeedRow(name, n, skipped=str(e).split(";")[0]))
            continue
        synchronize()
        t0 = time.perf_counter()
        out = lm.generate([prompt], n, generator=g, **options)
        synchronize()
        latency = time.perf_counter() - t0
        t0 = time.perf_counter()
        lm.generate([prompt] * batch, n, generator=g, **options)
        synchronize()
        throughput = batch * n / (time.perf_counter() - t0)
        with flop_counter() as counter:
            lm.generate([prompt], n, generator=g, **options)
        rows.append(SpeedRow(name, n, out.nfe, latency, throughput, counter.get_total_flops() / 1e9,
                             tokens_made=n if fixed else tokens_made(lm, out)))
    return rows


def tokens_made(lm, out) -> int | None:
    """New tokens of the first sample of ``out``: its ``sequences`` row up to the padding that follows an
    end-of-text (a generator that stops when every row has ended returns fewer than asked). None when
    the output has no token ids."""
    seq, tok = getattr(out, "sequences", None), getattr(lm, "tokenizer", None)
    if seq is None or tok is None:
        return None
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    row = seq[0].tolist()
    return row.index(pad) if pad in row else len(row)


def speed_table(rows: list[SpeedRow], reference: str = "ar") -> str:
    """Markdown table with ratios of latency to the ``reference`` model at the same length."""
    ref = {r.new_tokens: r for r in rows if r.model == reference and r.latency_s}
    lines = ["| model | new tokens | made | NFE | latency (s, batch 1) | tokens/s (batch 16) | GFLOPs/sample | "
             f"latency / {reference} |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.skipped:
            lines.append(f"| {r.model} | {r.new_tokens} | - | - | - | - | - | skipped: {r.skipped} |")
            continue
        ratio = f"{r.latency_s / ref[r.new_tokens].latency_s:.2f}" if r.new_tokens in ref else "-"
        made = "-" if r.tokens_made is None else str(r.tokens_made)
        lines.append(f"| {r.model} | {r.new_tokens} | {made} | {r.nfe} | {r.latency_s:.3f} | {r.tokens_per_s:.0f} | "
                     f"{r.gflops_per_sample:.2f} | {ratio} |")
    return "\n".join(lines)


def rows_to_json(rows: list[SpeedRow]) -> list[dict]:
    return [asdict(r) for r in rows]
