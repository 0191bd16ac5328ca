"""Reliability figures from tests that could fail: random kills, determinism across processes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .scripts.fault_injection import run_fault_injection

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ten_random_kills_lose_nothing(tmp_path):
    save_every = 4
    report = run_fault_injection(tmp_path, kills=10, steps=80, save_every=save_every, seed=0)
    assert report["kills_attempted"] == 10, report
    assert report["kills_survived"] == 10, report["events"]
    assert any(e.get("kind") == "during checkpoint write" for e in report["events"])
    assert report["max_steps_lost"] <= save_every, report["steps_lost"]
    assert report["final_step"] == 80 and report["identical_to_uninterrupted"], report


@pytest.mark.slow
def test_same_seed_same_losses_and_samples_across_two_processes(tmp_path):
    script = ROOT / "tests" / "scripts" / "determinism_run.py"
    outs = []
    for i in range(2):
        proc = subprocess.run([sys.executable, str(script), str(tmp_path / f"p{i}"), "3"], capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(json.loads(proc.stdout.splitlines()[-1]))
    a, b = outs
    assert set(a) == {"autoencoder", "denoiser", "ar", "mdlm"}
    for kind in a:
        assert len(a[kind]["losses"]) == 4 and a[kind]["losses"] == b[kind]["losses"], kind
        assert a[kind].get("samples") == b[kind].get("samples"), kind
    assert a["ar"]["samples"][0].strip()  # the samples are real text, not empty


def test_corrupt_model_files_give_errors_naming_the_file(tmp_path, tiny_tokenizer):
    import pytest
    import torch

    from latentlm.baselines import CausalLM
    from latentlm.errors import CheckpointError
    from latentlm.loading import load_model

    folder = tmp_path / "ar"
    torch.manual_seed(0)
    CausalLM(vocab_size=len(tiny_tokenizer), dim=16, depth=1, n_heads=2, max_seq_len=16).save_pretrained(folder)
    (weights,) = folder.glob("*.safetensors")
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(CheckpointError, match=weights.name):
        load_model(folder)
    flipped = bytearray(good)
    flipped[4] ^= 0xFF  # the header length: a bit flip there makes the file unreadable
    weights.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=weights.name):
        load_model(folder)
    weights.write_bytes(good)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        load_model(folder)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_model(folder)
