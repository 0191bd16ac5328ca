import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LATENTLM_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_file(*parts: str) -> Path:
    """A file of ../shared/data, or skip the test with a clear message."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"shared data {path} not found (set LATENTLM_SHARED_DATA to the data folder)")
    return path


@pytest.fixture(scope="session")
def synthetic_texts() -> list[str]:
    from latentlm.data.synthetic import generate_stories

    return [s.text for s in generate_stories(400, seed=123)]


@pytest.fixture(scope="session")
def tiny_tokenizer(synthetic_texts):
    from latentlm.data.tokenizer import train_tokenizer

    return train_tokenizer(synthetic_texts, vocab_size=512)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
