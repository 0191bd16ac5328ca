"""Atomic file writes: readers see a file's old content or its new one, never half of it.

Every file latentlm writes for a user (checkpoints' manifests, exported models, run
configs, ``compare``'s results and samples, evaluation JSON) goes through these: write a
temporary file in the same folder, flush and fsync it, rename it over the target, fsync
the folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename inside folder ``path`` durable (a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def move_tree(tmp: Path, out_dir: Path) -> None:
    """Move the files written into ``tmp`` over those in ``out_dir``, each with an atomic rename; a
    pipeline's ``model_index.json`` (what makes the folder a pipeline) last. Removes ``tmp``."""
    files = sorted((f for f in tmp.rglob("*") if f.is_file()), key=lambda f: (f.name == "model_index.json", f))
    for f in files:
        target = out_dir / f.relative_to(tmp)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, target)
        fsync_dir(target.parent)
    shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(tmp: Path, final: Path) -> None:
    """Rename the finished folder ``tmp`` to ``final`` (replacing it) and make it durable."""
    for p in (tmp, *(p for p in tmp.rglob("*") if p.is_dir())):
        fsync_dir(p)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(final.parent)
