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


def link_copies(folder: Path, others: list[Path], min_bytes: int = 1 << 16) -> int:
    """Replace each file of ``folder`` (``min_bytes`` or larger, outside ``checkpoints/``) that has the
    same bytes as a file in one of ``others`` by a relative symlink to that file, atomically; returns
    the bytes saved. A run folder keeps one copy of a model that several pipelines carry (a latent
    pipeline's autoencoder is a copy of the autoencoder run it was trained on)."""
    def big_files(root: Path) -> list[Path]:
        return [f for f in root.rglob("*") if f.is_file() and not f.is_symlink() and "checkpoints" not in
                f.relative_to(root).parts and f.stat().st_size >= min_bytes]

    known: dict[int, list[Path]] = {}
    for root in others:
        if root.is_dir() and root.resolve() != folder.resolve():
            for f in big_files(root):
                known.setdefault(f.stat().st_size, []).append(f)
    saved, digests = 0, {}
    for f in big_files(folder):
        size = f.stat().st_size
        if size not in known:
            continue
        mine = sha256(f)
        for o in known[size]:
            if o not in digests:
                digests[o] = sha256(o)
        match = next((o for o in known[size] if digests[o] == mine), None)
        if match is None:
            continue
        link = f.with_name(f".{f.name}.link-{os.getpid()}")
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(match, f.parent))
        os.replace(link, f)
        fsync_dir(f.parent)
        saved += size
    return saved
