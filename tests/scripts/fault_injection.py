"""Fault injection: SIGKILL a training run at random moments, resume it each time, compare with a clean run.

usage: python tests/scripts/fault_injection.py OUT_DIR [--kills 10] [--steps 60] [--save-every 5] [--seed 0]

Kills come in two kinds, mixed at random: from outside at a random moment of
the run (any point of a step, of logging, or of a checkpoint write), and from
inside in the middle of a checkpoint write (weights file half-written, then
SIGKILL). Each run is a process of its own, forked from a server that has imported
torch and latentlm once (multiprocessing's forkserver), so a kill is a real SIGKILL
of a whole process without paying the imports for every run. After each kill the script checks that ``latest`` names a checkpoint
that passes its SHA-256 manifest, and counts the steps lost (last logged step
minus the step resumed from). Finally the resumed run's weights must equal those
of an uninterrupted run of the same seed and step count, bit for bit.
Prints a JSON report (and writes OUT_DIR/fault_report.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import signal
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

try:
    from . import tiny_run
except ImportError:  # run as a script: tests/scripts is on sys.path
    import tiny_run

# a server that imports these once; every run is forked from it (a fresh interpreter costs ~5 s of imports)
_FORKSERVER = multiprocessing.get_context("forkserver")
_FORKSERVER.set_forkserver_preload(["torch", "latentlm.training", "latentlm.baselines.autoregressive"])


def _logged_step(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return 0
    steps = [json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line.strip()]
    return max(steps, default=0)


def _latest(run: Path) -> int:
    from latentlm.training import validate_checkpoint

    root = run / "checkpoints"
    if not (root / "latest").is_file():
        return 0
    return int(validate_checkpoint(root / (root / "latest").read_text().strip())["step"])  # raises if corrupt


def _weights_equal(a: Path, b: Path) -> bool:
    (fa,), (fb,) = a.glob("*.safetensors"), b.glob("*.safetensors")
    wa, wb = load_file(fa), load_file(fb)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _quiet_run(argv: list[str]) -> None:
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):  # its result is in the run folder
        tiny_run.main(argv)


def start_tiny_run(*argv: str) -> multiprocessing.Process:
    """tiny_run.py with arguments ``argv`` in a process of its own, forked from the server."""
    proc = _FORKSERVER.Process(target=_quiet_run, args=(list(argv),))
    proc.start()
    return proc


def _start(run: Path, steps: int, save_every: int, *extra: str) -> multiprocessing.Process:
    """The training of ``run`` (``--slow``: 50 ms per step)."""
    return start_tiny_run(str(run), str(steps), "--save-every", str(save_every), "--slow", *extra)


def finish(proc: multiprocessing.Process, timeout: float = 300) -> int:
    """The process's exit code once it ends (negative: killed by that signal)."""
    proc.join(timeout)
    if proc.exitcode is None:
        proc.kill()
        raise TimeoutError(f"a training run did not finish in {timeout} s")
    return proc.exitcode


def run_fault_injection(out: Path, kills: int = 10, steps: int = 60, save_every: int = 5, seed: int = 0,
                        timeout: float = 300) -> dict:
    out = Path(out)
    rng = random.Random(seed)
    ref, run = out / "reference", out / "faulted"
    if finish(_start(ref, steps, save_every), timeout) != 0:
        raise RuntimeError(f"the uninterrupted reference run failed; see its output above ({ref})")
    events = []
    for i in range(kills):
        before = _logged_step(run)
        in_write = rng.random() < 0.3
        if in_write:  # die in the middle of the next checkpoint write
            code = finish(_start(run, steps, save_every, "--kill-on-save", "1"), timeout)
        else:  # die at a random moment a few steps into the resumed run
            proc = _start(run, steps, save_every)
            target = before + rng.randint(1, 2 * save_every)
            deadline = time.time() + timeout
            while proc.is_alive() and _logged_step(run) < target and time.time() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.06))  # anywhere inside a step (a step sleeps 50 ms)
            proc.kill()  # SIGKILL
            code = finish(proc, timeout)
        killed = code == -signal.SIGKILL
        reached = _logged_step(run)
        try:
            resume_from, valid = _latest(run), True
        except Exception as e:  # a corrupt `latest` is exactly what this script must detect
            resume_from, valid = -1, False
            events.append({"kill": i + 1, "error": f"{type(e).__name__}: {e}"})
        events.append({"kill": i + 1, "kind": "during checkpoint write" if in_write else "random moment",
                       "killed": killed, "reached_step": reached, "latest_valid": valid,
                       "resume_from": resume_from, "steps_lost": reached - resume_from if valid else None})
        if reached >= steps:
            break
    ok = finish(_start(run, steps, save_every), timeout) == 0
    final = json.loads((run / "result-rank0.json").read_text()) if ok else {}
    kill_events = [e for e in events if "kind" in e]
    report = {
        "kills_attempted": len(kill_events),
        "kills_survived": sum(e["killed"] and e["latest_valid"] for e in kill_events),
        "steps_lost": [e["steps_lost"] for e in kill_events],
        "max_steps_lost": max((e["steps_lost"] or 0 for e in kill_events), default=0),
        "final_step": final.get("step"),
        "identical_to_uninterrupted": ok and _weights_equal(ref, run),
        "events": events,
    }
    (out / "fault_report.json").write_text(json.dumps(report, indent=2))
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--save-every", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    report = run_fault_injection(Path(args.out), args.kills, args.steps, args.save_every, args.seed)
    print(json.dumps({k: v for k, v in report.items() if k != "events"}, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main()
