"""Tokenized corpora on disk: token shards read window by window, for corpora larger than memory.

A shard folder (``latentlm data tokenize``) holds the token stream of a corpus, every document followed
by end-of-text, in files ``shard_00000.bin`` (raw uint16 ids when the vocabulary fits, else uint32) of at
most ``shard_tokens`` tokens each (whole documents), with ``shard_00000.idx.npy`` (the offset of each
document in its shard) and ``manifest.json``: the tokenizer's fingerprint, the token and document counts,
each file's SHA-256. Training reads windows and documents through :class:`TokenShards` (``os.pread``
of each window): memory does not grow with the corpus.

Writing is atomic per shard and resumable: ``progress.json`` lists the finished shards and the documents
they hold; a rerun after a kill deletes a half-written shard, skips the documents already written and
produces the very files an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from array import array
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from latentlm.choices import DEFAULT_SHARD_TOKENS
from latentlm.errors import DataError, InputError
from latentlm.files import write_text_atomic

MANIFEST, PROGRESS = "manifest.json", "progress.json"
FORMAT = "latentlm-token-shards/1"


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of the tokenizer's vocabulary and special ids: shards of another tokenizer are refused."""
    spec = {"vocab": tokenizer.get_vocab(), "eot": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode("utf-8")).hexdigest()


def is_shard_folder(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file() or (Path(path) / PROGRESS).is_file()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class _ShardWriter:
    """One shard written as its documents come: tokens go straight to ``NAME.bin.tmp`` (hashed on the way),
    only the document offsets stay in memory; ``finish`` syncs and renames the files into place."""

    def __init__(self, out: Path, name: str) -> None:
        self.bin, self.idx = out / f"{name}.bin", out / f"{name}.idx.npy"
        self.file = open(self.bin.with_name(self.bin.name + ".tmp"), "wb")
        self.hash = hashlib.sha256()
        self.starts = array("q")  # int64 offsets, 8 bytes a document
        self.tokens = 0

    def add(self, doc: np.ndarray) -> None:
        data = doc.tobytes()
        self.file.write(data)
        self.hash.update(data)
        self.starts.append(self.tokens)
        self.tokens += len(doc)

    def finish(self) -> dict:
        """Shard and index in place; returns the shard's manifest entry."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.file.name, self.bin)
        tmp = self.idx.with_name(self.idx.name + ".tmp")
        with open(tmp, "wb") as f:
            np.save(f, np.frombuffer(self.starts, dtype=np.int64))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.idx)
        return {"file": self.bin.name, "index": self.idx.name, "tokens": self.tokens, "documents": len(self.starts),
                "sha256": self.hash.hexdigest(), "index_sha256": _sha256(self.idx)}


def write_shards(docs: Iterable[str], tokenizer, out: str | Path, *, shard_tokens: int = DEFAULT_SHARD_TOKENS,
                 sources: list[str] | None = None, progress: bool = True, chunk: int = 1024) -> dict:
    """Tokenize ``docs`` (an iterable, read once, in order) into a shard folder ``out``; returns its manifest.

    A folder with a finished manifest of the same tokenizer is returned as it is; one with
    ``progress.json`` is resumed. Raises InputError for a bad ``shard_tokens``, DataError when ``out``
    holds shards of another tokenizer or shard size, or when no document has a token.
    """
    if shard_tokens < 1:
        raise InputError(f"shard_tokens must be positive, got {shard_tokens}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = tokenizer_fingerprint(tokenizer)
    dtype = "uint16" if len(tokenizer) <= 2**16 else "uint32"
    if (out / MANIFEST).is_file():
        manifest = read_manifest(out)
        if manifest["tokenizer_sha256"] != fingerprint:
            raise DataError(f"{out} holds shards of another tokenizer; write these to another folder")
        return manifest
    state = {"format": FORMAT, "tokenizer_sha256": fingerprint, "dtype": dtype, "shard_tokens": shard_tokens,
             "eot_id": tokenizer.eos_token_id, "shards": [], "documents_done": 0}
    if (out / PROGRESS).is_file():
        done = json.loads((out / PROGRESS).read_text("utf-8"))
        mismatch = [k for k in ("format", "tokenizer_sha256", "dtype", "shard_tokens") if done.get(k) != state[k]]
        if mismatch:
            raise DataError(f"{out} holds an unfinished tokenization with another {', '.join(mismatch)}; "
                            "rerun with the same settings or write to another folder")
        state = done
    for stale in out.glob("*.tmp"):  # a shard cut by a kill is redone
        stale.unlink()
    if not (out / "tokenizer").is_dir():
        tokenizer.save_pretrained(out / "tokenizer")  # training on the shards uses it
    eot = np.asarray([tokenizer.eos_token_id], dtype=dtype)
    written = sum(s["tokens"] for s in state["shards"])
    bar = tqdm(total=None, initial=written, unit="tok", unit_scale=True, desc=f"tokenize -> {out.name}",
               disable=not progress)
    shard: _ShardWriter | None = None

    def flush() -> None:
        nonlocal shard
        entry = shard.finish()
        state["shards"].append(entry)
        state["documents_done"] += entry["documents"] + state.pop("skipped", 0)
        write_text_atomic(out / PROGRESS, json.dumps(state, indent=1))
        shard = None

    stream = itertools.islice(iter(docs), state["documents_done"], None)
    while True:
        batch = [d for d in itertools.islice(stream, chunk)]
        if not batch:
            break
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            if not ids:  # as in-memory batches, a document without tokens is left out
                state["skipped"] = state.get("skipped", 0) + 1
                continue
            doc = np.concatenate([np.asarray(ids, dtype=dtype), eot])
            if shard is not None and shard.tokens + len(doc) > shard_tokens:
                flush()
            if shard is None:
                shard = _ShardWriter(out, f"shard_{len(state['shards']):05d}")
            shard.add(doc)
            bar.update(len(doc))
    if shard is not None:
        flush()
    bar.close()
    if not state["shards"]:
        raise DataError("no document to tokenize (the input is empty)")
    manifest = {k: v for k, v in state.items() if k not in ("documents_done", "skipped")}
    manifest.update(tokens=sum(s["tokens"] for s in state["shards"]),
                    documents=sum(s["documents"] for s in state["shards"]), sources=sources or [])
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=1))
    (out / PROGRESS).unlink()
    return manifest


def read_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        if (folder / PROGRESS).is_file():
            raise DataError(f"{folder} is an unfinished tokenization: rerun `latentlm data tokenize` to finish it")
        raise DataError(f"{folder} is not a shard folder (no {MANIFEST}); make one with `latentlm data tokenize`")
    try:
        manifest = json.loads((folder / MANIFEST).read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{folder / MANIFEST} is not valid JSON: {e}") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{folder / MANIFEST} is not a latentlm shard manifest ({FORMAT})")
    return manifest


class _Reader:
    """``n`` values of ``dtype`` stored from byte ``offset`` of a file, read with ``os.pread``: no memory map,
    whose pages (2 MB folios on recent kernels) would count towards the process's resident memory as
    random windows touch them; the page cache keeps what is read often."""

    def __init__(self, path: Path, dtype: np.dtype, offset: int, n: int) -> None:
        self.path, self.dtype, self.offset, self.n = path, dtype, offset, n
        self.fd = os.open(path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: slice) -> np.ndarray:
        start, stop, _ = key.indices(self.n)
        size = max(0, stop - start) * self.dtype.itemsize
        data = os.pread(self.fd, size, self.offset + start * self.dtype.itemsize)
        if len(data) != size:
            raise DataError(f"shard file {self.path} is shorter than its manifest says")
        return np.frombuffer(data, dtype=self.dtype)

    def __del__(self) -> None:
        try:
            os.close(self.fd)
        except (AttributeError, OSError):
            pass


class TokenShards:
    """The token stream of a shard folder, read window by window: ``len`` tokens, ``num_documents``,
    ``window(start, n)`` and ``document(i)`` (its ids without the end-of-text). With ``verify`` every
    file is checked against its SHA-256 first (a corrupt shard is refused, named)."""

    def __init__(self, folder: str | Path, *, verify: bool = True) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.dtype = np.dtype(self.manifest["dtype"])
        self.eot_id = int(self.manifest["eot_id"])
        self._tokens: list[_Reader] = []
        self._starts: list[_Reader] = []  # each shard's document offsets
        for s in self.manifest["shards"]:
            path, idx = self.folder / s["file"], self.folder / s["index"]
            for f, key in ((path, "sha256"), (idx, "index_sha256")):
                if not f.is_file():
                    raise DataError(f"shard file {f} is missing")
                if verify and _sha256(f) != s[key]:
                    raise DataError(f"shard file {f} is corrupt (its SHA-256 differs from the manifest's); "
                                    "rerun `latentlm data tokenize` into a new folder")
            if path.stat().st_size != s["tokens"] * self.dtype.itemsize:
                raise DataError(f"shard file {path} has {path.stat().st_size} bytes, expected "
                                f"{s['tokens'] * self.dtype.itemsize}")
            self._tokens.append(_Reader(path, self.dtype, 0, s["tokens"]))
            with open(idx, "rb") as f:  # the .npy header, then int64 offsets
                np.lib.format.read_array_header_1_0(f) if np.lib.format.read_magic(f) == (1, 0) else \
                    np.lib.format.read_array_header_2_0(f)
                self._starts.append(_Reader(idx, np.dtype(np.int64), f.tell(), s["documents"]))
        self._shard_starts = np.cumsum([0] + [s["tokens"] for s in self.manifest["shards"]])
        self._shard_docs = np.cumsum([0] + [s["documents"] for s in self.manifest["shards"]])

    def __len__(self) -> int:
        return int(self._shard_starts[-1])

    @property
    def num_documents(self) -> int:
        return int(self._shard_docs[-1])

    def window(self, start: int, n: int) -> np.ndarray:
        """Tokens ``start .. start + n`` of the stream (across shard boundaries), as int64."""
        out = np.empty(n, dtype=np.int64)
        i = int(np.searchsorted(self._shard_starts, start, side="right")) - 1
        got = 0
        while got < n:
            lo = start + got - int(self._shard_starts[i])
            take = min(n - got, len(self._tokens[i]) - lo)
            out[got : got + take] = self._tokens[i][lo : lo + take]
            got += take
            i += 1
        return out

    def document(self, i: int) -> np.ndarray:
        """Document ``i``'s ids (int64), without its end-of-text."""
        shard = int(np.searchsorted(self._shard_docs, i, side="right")) - 1
        j = i - int(self._shard_docs[shard])
        starts = self._starts[shard]
        bounds = starts[j : j + 2]
        end = int(bounds[1]) if len(bounds) == 2 else len(self._tokens[shard])
        return np.asarray(self._tokens[shard][int(bounds[0]) : end - 1], dtype=np.int64)
