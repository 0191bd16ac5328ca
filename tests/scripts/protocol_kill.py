"""The protocol killed mid-stage and rerun gives the same table as an uninterrupted run.

usage: python tests/scripts/protocol_kill.py OUT_DIR [--kill-at 15] [--steps 40] [--save-every 5]

On synthetic stories standing in for TinyStories' three splits, at the cpu-tiny preset with a small
``compare``: run A is the protocol uninterrupted; run B is the same command SIGKILLed (a real kill of
the whole process, no handler runs) once its autoencoder stage has logged ``--kill-at`` of its
``--steps`` steps, then rerun to the end. Prints a JSON report (also OUT_DIR/protocol_kill.json): the
step B resumed from, both runs' stage times, and whether every number of the two results tables is
equal (batch-1 latencies, which are timings, excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _tiny_config(steps: int, save_every: int):
    from latentlm import protocol as P
    from latentlm.eval.compare import CompareConfig

    stages = P.STAGES[:4]  # AR, judge, autoencoder, denoiser
    short = ["train.steps=3", "train.warmup_steps=1", "train.eval_every=3", "train.batch_size=4"]
    overrides = {s.name: short for s in stages}
    overrides["autoencoder"] = [f"train.steps={steps}", "train.warmup_steps=2", f"train.eval_every={steps}",
                                "train.batch_size=4"]
    compare = CompareConfig(prompts=12, seeds=2, max_new_tokens=8, nll_texts=4, nll_samples=2, cloze_items=2,
                            nfe_sweep=(), speed_lengths=(8,), speed_batch=1, mauve=False, curves=False,
                            bootstrap=10, window=4)
    return P.ProtocolConfig(preset="cpu-tiny", save_every=save_every, overrides=overrides, splits=("valid",),
                            stages=stages, compare=compare, latents_texts=8, latents_prompts=6)


def child(out: Path, data: Path, steps: int, save_every: int) -> None:
    from latentlm import protocol as P

    P.tinystories_protocol(out, data, cfg=_tiny_config(steps, save_every), progress=False, log=lambda _: None)


def _logged_step(metrics: Path) -> int:
    if not metrics.is_file():
        return 0
    steps = []
    for line in metrics.read_text().splitlines():
        try:
            steps.append(json.loads(line).get("step", 0))
        except json.JSONDecodeError:
            pass  # the line being written
    return max(steps, default=0)


def _run(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *args], **kw)


def _table(out: Path) -> dict:
    rows = json.loads((out / "results.json").read_text())["splits"]
    for split in rows.values():
        for r in split.values():
            r.pop("latency_s", None)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--kill-at", type=int, default=15, help="autoencoder step after which run B is killed")
    p.add_argument("--steps", type=int, default=40, help="the autoencoder stage's steps")
    p.add_argument("--save-every", type=int, default=5)
    p.add_argument("--child", metavar="DATA", help=argparse.SUPPRESS)  # run one protocol into OUT
    a = p.parse_args()
    if a.child:
        child(Path(a.out), Path(a.child), a.steps, a.save_every)
        return 0
    from latentlm.data.synthetic import generate_stories, write_jsonl

    root = Path(a.out)
    data = root / "data"
    for split, n, seed in (("train", 300, 0), ("valid", 40, 1), ("test", 40, 2)):
        write_jsonl(generate_stories(n, seed=seed), data / f"{split}.jsonl")
    common = ["--steps", str(a.steps), "--save-every", str(a.save_every)]

    t0 = time.perf_counter()
    if _run([str(root / "A"), *common, "--child", str(data)]).wait() != 0:
        raise SystemExit("the uninterrupted run failed")
    seconds_a = time.perf_counter() - t0

    t0 = time.perf_counter()
    b = root / "B"
    proc = _run([str(b), *common, "--child", str(data)], start_new_session=True)
    while _logged_step(b / "autoencoder" / "metrics.jsonl") < a.kill_at:
        if proc.poll() is not None:
            raise SystemExit(f"run B ended (exit {proc.returncode}) before its autoencoder reached step {a.kill_at}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _logged_step(b / "autoencoder" / "metrics.jsonl")
    latest = b / "autoencoder" / "checkpoints" / "latest"
    resumed_from = latest.read_text().strip() if latest.is_file() else None
    if _run([str(b), *common, "--child", str(data)]).wait() != 0:
        raise SystemExit("the rerun of the killed run failed")
    seconds_b = time.perf_counter() - t0

    table_a, table_b = _table(root / "A"), _table(b)
    differing = [f"{split}/{row}/{k}" for split in table_a for row in table_a[split]
                 for k in table_a[split][row] if table_a[split][row][k] != table_b.get(split, {}).get(row, {}).get(k)]
    stages_b = json.loads((b / "protocol.json").read_text())["stages"]
    report = {"autoencoder_steps": a.steps, "killed_after_step": killed_at, "resumed_from": resumed_from,
              "autoencoder_runs": stages_b["autoencoder"]["runs"], "seconds_uninterrupted": round(seconds_a, 1),
              "seconds_killed_and_rerun": round(seconds_b, 1),
              "numbers_compared": sum(len(r) for s in table_a.values() for r in s.values()),
              "differing": differing, "same_table": not differing and table_a.keys() == table_b.keys()}
    (root / "protocol_kill.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0 if report["same_table"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
