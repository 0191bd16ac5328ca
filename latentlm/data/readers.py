"""Read documents from local text files, JSONL files, folders, or Hugging Face datasets.

* ``.txt``: documents separated by blank lines; a file without blank lines is
  read one document per line.
* ``.jsonl``: one JSON object per line with a ``text`` field.
* a folder: every ``.txt`` / ``.jsonl`` file below it, in sorted order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from latentlm.errors import DataError

TEXT_SUFFIXES = (".txt", ".jsonl")


def _lines(path: Path, with_breaks: bool = False) -> Iterator[tuple[int, str]]:
    """(line number, line without its line break, or with it) of a UTF-8 file, streamed."""
    lineno = 0
    try:
        with open(path, encoding="utf-8", newline="") as f:
            for lineno, line in enumerate(f, 1):
                if with_breaks:
                    yield lineno, line
                else:
                    yield lineno, line[:-2] if line.endswith("\r\n") else line.rstrip("\n")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not valid UTF-8 (after line {lineno}, {e.reason}); re-encode it as UTF-8, "
            f"e.g. `iconv -f latin1 -t utf-8 {path.name}`"
        ) from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None


def _is_blank(line: str) -> bool:
    return not line.strip(" \t")


def iter_txt(path: Path) -> Iterator[str]:
    """Documents of a ``.txt`` file, streamed: paragraphs split on blank lines, or one per line when the
    file has no blank line between two lines."""
    paragraphs = any(lineno > 1 and line.endswith("\n") and _is_blank(line.rstrip("\r\n"))
                     for lineno, line in _lines(path, with_breaks=True))  # a first pass, holding nothing
    if not paragraphs:
        yield from (line.strip() for _, line in _lines(path) if line.strip())
        return
    current: list[str] = []
    for _, line in _lines(path):
        if _is_blank(line):
            if "\n".join(current).strip():
                yield "\n".join(current).strip()
            current = []
        else:
            current.append(line)
    if "\n".join(current).strip():
        yield "\n".join(current).strip()


def read_txt(path: Path) -> list[str]:
    """Documents of a ``.txt`` file: split on blank lines, or one per line when there are none."""
    return list(iter_txt(path))


def iter_jsonl(path: Path, field: str = "text") -> Iterator[str]:
    """Documents of a ``.jsonl`` file, streamed: the ``field`` of every non-empty line."""
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise DataError(f"{path}:{lineno}: expected an object with a string {field!r} field")
        if record[field].strip():
            yield record[field].strip()


def read_jsonl(path: Path, field: str = "text") -> list[str]:
    """Documents of a ``.jsonl`` file: the ``field`` of every non-empty line."""
    return list(iter_jsonl(path, field))


def _files_of(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not files:
            raise DataError(f"folder {path} contains no .txt or .jsonl files")
        return files
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    if path.suffix not in TEXT_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .txt or .jsonl")
    return [path]


def iter_documents(paths: str | Path | Sequence[str | Path]) -> Iterator[str]:
    """The documents of :func:`read_documents`, streamed (for corpora larger than memory:
    ``latentlm data tokenize``)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise DataError("no data path given")
    files = [f for p in paths for f in _files_of(Path(p))]  # every path checked before any is read
    for f in files:
        yield from (iter_jsonl(f) if f.suffix == ".jsonl" else iter_txt(f))


def iter_hf_dataset(name_or_path: str, split: str = "train", *, field: str = "text",
                    config: str | None = None) -> Iterator[str]:
    """Documents of a Hugging Face dataset streamed (``streaming=True``: nothing is downloaded or held
    whole): a hub name, or local ``.parquet`` / ``.arrow`` / ``.jsonl`` files or a folder of them."""
    try:
        import datasets  # optional: the [hub] extra
    except ImportError:
        raise DataError("streaming a Hugging Face dataset needs `datasets`: pip install 'latentlm[hub]'") from None
    local = Path(name_or_path)
    builders = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json"}
    try:
        if local.exists():
            files = sorted(p for p in local.rglob("*") if p.suffix in builders) if local.is_dir() else [local]
            kinds = {builders.get(f.suffix) for f in files}
            if not files or None in kinds or len(kinds) > 1:
                raise DataError(f"{local}: expected .parquet, .arrow or .jsonl files of one kind")
            ds = datasets.load_dataset(kinds.pop(), data_files=[str(f) for f in files], split="train",
                                       streaming=True)
        else:
            ds = datasets.load_dataset(name_or_path, config, split=split, streaming=True)
    except DataError:
        raise
    except Exception as e:  # datasets raises many types (FileNotFoundError, ConnectionError...)
        raise DataError(f"cannot stream dataset {name_or_path!r} split {split!r}: {e}") from e
    for i, record in enumerate(ds):
        if field not in record:
            raise DataError(f"dataset {name_or_path!r} has no {field!r} column; columns: {sorted(record)}")
        text = record[field]
        if isinstance(text, str) and text.strip():
            yield text.strip()
        elif i == 0 and not isinstance(text, str):
            raise DataError(f"column {field!r} of dataset {name_or_path!r} holds {type(text).__name__}, not text")


def read_documents(paths: str | Path | Sequence[str | Path]) -> list[str]:
    """Read every document of the given files and folders, in order.

    Raises:
        DataError: a path is missing, unsupported, not UTF-8, malformed, or no
            document was found.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise DataError("no data path given")
    docs: list[str] = []
    for p in paths:
        for f in _files_of(Path(p)):
            docs.extend(read_jsonl(f) if f.suffix == ".jsonl" else read_txt(f))
    if not docs:
        raise DataError(f"no text found in {', '.join(str(p) for p in paths)} (files are empty)")
    return docs


def load_hf_dataset(
    name_or_path: str, split: str = "train", *, field: str = "text", config: str | None = None
) -> list[str]:
    """Documents of a Hugging Face ``datasets`` dataset (a hub name or a local path).

    Needs the optional ``datasets`` package (``pip install latentlm[hub]``).
    """
    try:
        import datasets  # optional: the [hub] extra
    except ImportError:
        raise DataError(
            "loading a Hugging Face dataset needs `datasets`: pip install 'latentlm[hub]'"
        ) from None
    try:
        ds = datasets.load_dataset(name_or_path, config, split=split)
    except Exception as e:  # datasets raises many types (FileNotFoundError, ConnectionError...)
        raise DataError(f"cannot load dataset {name_or_path!r} split {split!r}: {e}") from e
    if field not in ds.column_names:
        raise DataError(f"dataset {name_or_path!r} has no {field!r} column; columns: {ds.column_names}")
    docs = [t.strip() for t in ds[field] if isinstance(t, str) and t.strip()]
    if not docs:
        raise DataError(f"dataset {name_or_path!r} split {split!r} has no text")
    return docs


HF_FILE_SUFFIXES = (".parquet", ".arrow")


def corpus_documents(paths: Sequence[str | Path], hf_dataset: str | None = None, *, split: str = "train",
                     field: str = "text", config: str | None = None) -> Iterator[str]:
    """Every document of local text files and folders and local ``.parquet`` / ``.arrow`` files
    (streamed through ``datasets``), in the order given, then of a Hugging Face dataset; one at a time."""
    for p in paths:  # every path checked before any is read
        if Path(p).suffix in HF_FILE_SUFFIXES and not Path(p).is_file():
            raise DataError(f"data path {p} does not exist")
        if Path(p).suffix not in HF_FILE_SUFFIXES:
            _files_of(Path(p))
    for p in paths:
        yield from iter_hf_dataset(str(p), field=field) if Path(p).suffix in HF_FILE_SUFFIXES else iter_documents(p)
    if hf_dataset:
        yield from iter_hf_dataset(hf_dataset, split, field=field, config=config)
