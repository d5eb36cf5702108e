"""Atomic file writes: a reader never sees a half-written file, a killed run leaves the old one."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import DataError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or a folder's) contents and metadata to the disk. A folder that cannot be opened or
    synced (Windows, some network file systems) is left to the system; a file that cannot is an OSError."""
    folder = os.path.isdir(path)
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if folder else 0))
    except OSError:
        if folder:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not folder:
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    The temporary file lives in the same folder so that ``os.replace`` is atomic. It is flushed to the
    disk before the rename and the folder after it: a crash or power loss leaves the old file or the
    whole new one, never an empty or partial one under the final name. On error the temporary file is
    removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes owner-only files; give the result the permissions a plain open() would.
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_umask())
            fsync_path(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(target.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line and flush it to disk (used for ``metrics.jsonl``).

    A file whose last line was torn (no final newline) gets one first, so the new line stays whole.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    torn = False
    if target.is_file() and target.stat().st_size:
        with open(target, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    with open(target, "a", encoding="utf-8") as f:
        f.write(("\n" if torn else "") + line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def atomic_write_dir(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Build a folder with ``write(tmp_dir)`` and move it into place as a whole.

    An existing folder at ``path`` is replaced only once the new one is complete.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            old.rmdir()
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Parse a JSON file; every failure is one :class:`DataError` naming the file and the problem.

    ``what`` says what the file is for ("annotations file", "results file", ...). A file that ends
    early is called truncated; a syntax error gets its line and column.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist; check the path") from None
    except OSError as e:
        raise DataError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")  # tolerate a byte-order mark
    except UnicodeDecodeError as e:
        raise DataError(f"{what} {path} is not UTF-8 text (bad byte at offset {e.start}); is it really JSON?") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        hint = (
            "the file ends early: it looks truncated, re-export or re-copy it"
            if e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated string")
            else "fix the syntax there or re-export the file"
        )
        raise DataError(
            f"{what} {path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno} (char {e.pos}); {hint}"
        ) from None


def read_jsonl(path: str | os.PathLike, what: str = "log") -> list[dict[str, Any]]:
    """The records of a JSON-lines file (one object per line), e.g. a phase's ``metrics.jsonl``.

    A last line without its newline that does not parse is what a kill during an append leaves: it
    is skipped. Any other line that is not a JSON object is one :class:`DataError` naming the file
    and the line number.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8", errors="strict")
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist; check the path") from None
    except OSError as e:
        raise DataError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{what} {path} is not UTF-8 text (bad byte at offset {e.start})") from None
    lines = text.split("\n")
    unfinished = lines.pop()  # "" when the file ends with a newline
    records = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            records.append(_jsonl_record(path, what, number, line))
    if unfinished.strip():
        try:
            records.append(_jsonl_record(path, what, len(lines) + 1, unfinished))
        except DataError:
            pass  # torn by a kill mid-append
    return records


def _jsonl_record(path: Path, what: str, number: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{what} {path}, line {number}: not valid JSON ({e.msg} at column {e.colno}); each line must be one JSON "
            f"object: fix or delete that line"
        ) from None
    if not isinstance(record, dict):
        raise DataError(f"{what} {path}, line {number}: expected a JSON object, got {type(record).__name__}")
    return record


def write_jsonl(path: str | os.PathLike, records: list[dict[str, Any]]) -> None:
    """Replace a JSON-lines file with ``records``, atomically."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def unique_names(stems: Sequence[str], suffixes: Sequence[str] | None = None, start: int = 2) -> list[str]:
    """File names for one folder: ``stem + suffix``, a repeat becoming ``stem_<start> + suffix``, ..."""
    used: set[str] = set()
    result = []
    for i, stem in enumerate(stems):
        suffix = suffixes[i] if suffixes is not None else ""
        candidate, n = f"{stem}{suffix}", start
        while candidate in used:
            candidate, n = f"{stem}_{n}{suffix}", n + 1
        used.add(candidate)
        result.append(candidate)
    return result
