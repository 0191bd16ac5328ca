"""Safe loading: weights only from safetensors, no pickle, no remote code (a source scan)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted({p.resolve() for d in ("latentlm", "autoencoder", "diffusion", "eval")
                  for p in (ROOT / d).rglob("*.py")})


def _code_lines(path: Path):
    for n, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        stripped = line.split("#", 1)[0]
        if stripped.strip():
            yield n, stripped


def test_sources_found():
    names = {p.name for p in SOURCES}
    assert {"training.py", "loading.py", "modeling_autoencoder.py", "pipeline_latent_diffusion.py"} <= names


def test_no_pickle_or_unsafe_torch_load():
    offenders = []
    for path in SOURCES:
        for n, line in _code_lines(path):
            if re.search(r"\bimport pickle\b|\bpickle\.load|\bdill\b|\bjoblib\.load", line):
                offenders.append(f"{path}:{n}: {line.strip()}")
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{path}:{n}: {line.strip()}")
    assert not offenders, offenders


def test_no_trust_remote_code():
    offenders = [f"{p}:{n}" for p in SOURCES for n, line in _code_lines(p)
                 if re.search(r"trust_remote_code\s*=\s*True", line)]
    assert not offenders, offenders


def test_model_loading_asks_for_safetensors():
    text = (ROOT / "latentlm" / "loading.py").read_text("utf-8")
    assert "use_safetensors=True" in text
