"""The TinyStories protocol in one resumable command: train every model at the preset's full budget,
compare them on valid.jsonl and test.jsonl, write results.json and the results table.

    python benchmarks/tinystories.py --out runs/ts [--data-dir ../shared/data/tinystories] [--preset cpu-small]
        [--model ar=runs/other_ar] [--set denoiser.train.steps=4000] [--splits valid test] [--render]

Hours on a 2-core CPU. Rerun the same command after any interruption: finished stages are skipped,
the running one resumes from its last checkpoint (every ``--save-every`` steps). ``--model
STAGE=DIR`` swaps in a trained model for a stage (stages: tokenizer, ar, judge, autoencoder,
denoiser, mdlm, denoiser_block). ``--variant NAME=BASE[@INPUT][:SECTION.KEY=VALUE,...]`` adds a model
(a tuning row) to the run: trained after the others, compared with them, remembered by the run folder;
a finished run trains and compares only the new row. ``--train-only`` trains every model and
compares nothing (``benchmarks/tinystories_queue.sh`` trains with both cores, then compares the splits
side by side). ``--status`` tells where a run stands (each stage's state, time so far and time left at
its pace). ``--render`` prints the table of a finished run and, with
``--write-docs``, puts it into README.md and docs/tinystories.md between their
``<!-- tinystories-results -->`` markers; ``--samples ROW`` adds the first openings' samples of ROW next
to the AR's.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from latentlm.config import split_scoped_overrides
from latentlm.errors import InputError, LatentLMError
from latentlm.protocol import (
    ProtocolConfig,
    protocol_compare_config,
    protocol_status,
    render_results,
    render_samples,
    render_status,
    render_training,
    tinystories_protocol,
    write_docs,
)

ROOT = Path(__file__).resolve().parents[1]


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM stop the run the way Ctrl-C does (a training stage checkpoints, compare keeps
    its finished sections and the stage's seconds), also in the queue's background compare processes,
    which a non-interactive shell starts with SIGINT ignored."""

    def stop(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="run folder (resumed when it exists)")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "tinystories"),
                   help="folder with train.jsonl, valid.jsonl and test.jsonl")
    p.add_argument("--preset", default="cpu-small")
    p.add_argument("--save-every", type=int, default=100, help="checkpoint interval of every training stage")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.SECTION.KEY=VALUE",
                   help="override one preset setting of one stage, e.g. --set denoiser.train.steps=4000")
    p.add_argument("--model", dest="models", action="append", default=[], metavar="STAGE=DIR",
                   help="use a trained model for a stage instead of training it")
    p.add_argument("--variant", dest="variants", action="append", default=[],
                   metavar="NAME=BASE[@INPUT][:SECTION.KEY=VALUE,...]",
                   help="one more model, a copy of stage or kind BASE with overrides, compared as row NAME and kept "
                        "in the run folder, e.g. --variant broad=denoiser:loss.time_mean=0,loss.time_std=1")
    p.add_argument("--splits", nargs="+", default=["valid", "test"], choices=["valid", "test"])
    p.add_argument("--train-only", action="store_true",
                   help="train every stage (and its generability report), compare nothing; results.json stays")
    p.add_argument("--prompts", type=int, help="openings per split (default: every opening)")
    p.add_argument("--seeds", type=int, help="samples per opening (default 2)")
    p.add_argument("--device", default="auto")
    p.add_argument("--status", action="store_true",
                   help="print where the run stands (each stage's state, time so far, time left); train nothing")
    p.add_argument("--render", action="store_true", help="print the table of a finished run; train nothing")
    p.add_argument("--write-docs", action="store_true", help="with --render: write the table into README and docs")
    p.add_argument("--samples", action="append", default=[], metavar="ROW",
                   help="with --render: the first openings' samples of ROW next to the AR's (repeatable)")
    p.add_argument("--n-samples", type=int, default=10, help="openings shown by --samples")
    args = p.parse_args(argv)
    _stop_on_signals()
    try:
        out = Path(args.out)
        if args.status:
            cfg = ProtocolConfig(splits=tuple(args.splits), variants=tuple(args.variants))
            print(render_status(protocol_status(out, cfg)))
            return 0
        if args.render:
            path = out / "results.json"
            if not path.is_file():
                raise InputError(f"{path} does not exist: run the protocol first (without --render)")
            results = json.loads(path.read_text())
            print(render_results(results))
            samples = ""
            if args.samples:
                samples = render_samples(out, next(reversed(results["splits"])), args.samples, args.n_samples)
                print(samples)
            if args.write_docs:
                for f in write_docs(results, ROOT, samples):
                    print(f"wrote the table into {f}")
            return 0
        overrides = split_scoped_overrides(args.overrides, "STAGE")
        models = {}
        for spec in args.models:
            stage, sep, folder = spec.partition("=")
            if not sep or not stage or not folder:
                raise InputError(f"--model takes STAGE=DIR, got {spec!r}")
            models[stage] = folder
        changes = {k: v for k, v in (("prompts", args.prompts), ("seeds", args.seeds)) if v is not None}
        cfg = ProtocolConfig(preset=args.preset, save_every=args.save_every, overrides=overrides,
                             compare=protocol_compare_config(**changes),
                             splits=() if args.train_only else tuple(args.splits),
                             variants=tuple(args.variants))
        results = tinystories_protocol(out, args.data_dir, cfg=cfg, models=models, device=args.device)
        if args.train_only:
            print(render_training(results))
        else:
            print(render_results(results, args.splits[-1]))
            print(f"results: {out / 'results.json'}")
    except LatentLMError as e:
        print(f"tinystories: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"tinystories: interrupted ({e or 'signal'}); checkpoints are saved: rerun the same command to resume",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
