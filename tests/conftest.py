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


# fixtures that train a model for a minute or more: a test that uses one belongs to the slow tier
SLOW_FIXTURES = {"tiny_autoencoder_dir"}


def pytest_collection_modifyitems(items) -> None:
    """Mark slow (``make test-fast`` skips them; ``make test`` runs everything) the tests that use a
    :data:`SLOW_FIXTURES` fixture, besides those marked ``@pytest.mark.slow`` by hand (4 s or more)."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


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
    torch.set_num_threads(int(os.environ.get("LATENTLM_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def synthetic_files(tmp_path_factory):
    """Synthetic train/valid JSONL files and a tokenizer folder trained on train."""
    from latentlm.data.synthetic import generate_stories, write_jsonl
    from latentlm.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("synthetic")
    train = generate_stories(3000, seed=0)
    write_jsonl(train, root / "train.jsonl")
    write_jsonl(generate_stories(200, seed=99), root / "valid.jsonl")
    train_tokenizer([s.text for s in train], 4096).save_pretrained(root / "tokenizer")
    return root


@pytest.fixture(scope="session")
def tiny_autoencoder_dir(synthetic_files, tmp_path_factory):
    """The cpu-tiny autoencoder trained on synthetic stories (about 1.5 minutes, once per session)."""
    from latentlm.recipes import run_training

    out = tmp_path_factory.mktemp("ae") / "run"
    result = run_training("autoencoder", [synthetic_files / "train.jsonl"], out, preset="cpu-tiny",
                          valid=[synthetic_files / "valid.jsonl"], tokenizer=synthetic_files / "tokenizer",
                          progress=False)
    assert not result.interrupted and result.step == 400, "the fixture's training was interrupted by a signal"
    return out
