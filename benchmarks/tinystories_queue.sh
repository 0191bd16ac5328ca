#!/usr/bin/env bash
# The TinyStories run queue: every model and row the project's open questions need, in one resumable
# command (`make tinystories`). Days on a 2-core AVX2 CPU, hours with native bf16. Rerun it after any
# stop (Ctrl-C, a kill, a session end): finished models, compare sections and sample batches are
# skipped, a training stage resumes from its last checkpoint (every 100 steps).
#
# Each phase trains its models with every core (stage times comparable with the AR's), compares them
# on valid.jsonl and test.jsonl side by side with one thread each (more samples per second on 2
# cores: docs/experiments/two-processes-or-two-threads.md), then writes results.json with both splits
# from the cache. Phase 1 is the headline table; later phases add rows to the same run folder.
#
#   OUT=runs/ts PYTHON=.venv/bin/python bash benchmarks/tinystories_queue.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/ts}
DATA=${DATA:-../shared/data/tinystories}

ts() { "$PY" benchmarks/tinystories.py --out "$OUT" --data-dir "$DATA" "$@"; }

phase() {
    echo "== tinystories queue: $* =="
    ts --train-only "$@"
    OMP_NUM_THREADS=1 ts --splits valid & valid=$!
    OMP_NUM_THREADS=1 ts --splits test & test=$!
    rc=0
    wait "$valid" || rc=$?
    wait "$test" || rc=$?
    [ "$rc" -eq 0 ] || exit "$rc"
    ts  # both splits, every section cached: results.json and results.md
}

# the covering training-time density with a light padding weight: the chosen denoiser recipe
BROAD=loss.time_mean=0,loss.time_std=1,loss.latent_pad_weight=0.1

# 1. the headline: AR, judge, MDLM, the latent model (parallel, block-AR), the chosen recipe and its
#    adapted decoder
phase --variant "block-broad=denoiser_block:$BROAD" --variant block-broad-adapted=decoder@block-broad

# 2. the uniform-state (duo) and score-entropy (SEDD) baselines. (runs/ts also holds the latent-space
#    screen that chose the preset's autoencoder, rows ae-chunk ... block-broad-chunk-d128-vae: a run folder
#    remembers its variants and compares them with every phase; their definitions are in protocol.json and
#    docs/experiments/which-latent-space-does-the-denoiser-write-best-from.md.)
phase --variant duo=duo --variant sedd=sedd

# 3. duo's quality against sampling steps, ancestral against the Psi-sampler (docs/baselines.md)
"$PY" benchmarks/quality_vs_steps.py --model "$OUT/duo" --judge "$OUT/judge" --data "$DATA/valid.jsonl" \
    --steps 8 16 32 64 128 256 --prompts 64 --sampler ancestral=decoder=ancestral \
    --sampler psi=decoder=psi,corrector=0.5,corrector_interval=0:0.5 --cache "$OUT/duo_steps"
# ... and ancestral sampling cooled to the Psi-sampler's entropy at 128 steps: the matched-entropy check
"$PY" benchmarks/quality_vs_steps.py --model "$OUT/duo" --judge "$OUT/judge" --data "$DATA/valid.jsonl" \
    --steps 128 --prompts 64 --sampler ancestral-t0.95=decoder=ancestral,temperature=0.95 --cache "$OUT/duo_steps_t095"
echo "tinystories queue: done. Render: $PY benchmarks/tinystories.py --out $OUT --render --write-docs"
