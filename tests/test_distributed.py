"""Data-parallel training on CPU: two torchrun ranks (gloo) vs one process, same global batch."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "tiny_run.py"


@pytest.mark.slow
def test_two_ranks_match_single_process(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "one"), "5"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29533", str(SCRIPT),
                          str(tmp_path / "two"), "5"], capture_output=True, text=True, env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = json.loads(single.stdout.strip().splitlines()[-1])["losses"]
    lines = [json.loads((tmp_path / "two" / f"result-rank{r}.json").read_text()) for r in (0, 1)]
    two = lines[0]["losses"]
    assert len(one) == len(two) == 5
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-5, (one, two)
    assert lines[0]["losses"] == lines[1]["losses"]  # reduced loss agrees across ranks
