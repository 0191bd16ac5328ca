"""The token-shard windows this process reads for its rows of a few training batches (run under torchrun).

usage: shard_reads.py SHARDS OUT_DIR; writes OUT_DIR/reads-rank{RANK}.json: per step, the window starts
read and the rows obtained.
"""

import json
import os
import sys
from pathlib import Path

from latentlm.data.packing import PackedBatches
from latentlm.data.shards import TokenShards
from latentlm.training import _local_batches


def main():
    shards, out = TokenShards(sys.argv[1]), Path(sys.argv[2])
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    reads = []
    window = shards.window
    shards.window = lambda start, n: reads.append(start) or window(start, n)
    data = PackedBatches(shards, seq_len=16, batch_size=8, eot_id=shards.eot_id, seed=3)
    steps = []
    for step in range(3):
        reads.clear()
        rows = _local_batches(data, step, rank, world, 1)[0]["input_ids"].tolist()
        steps.append({"reads": list(reads), "rows": rows})
    out.mkdir(parents=True, exist_ok=True)
    (out / f"reads-rank{rank}.json").write_text(json.dumps(steps))


if __name__ == "__main__":
    main()
