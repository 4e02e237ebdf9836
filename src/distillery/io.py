"""Paths that may be local or URIs (`s3://…`, `gs://…`, `file://…`), through pyarrow's filesystems.

Every stage reads and writes through these helpers so a run directory can live on object storage.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from typing import Any, Callable

import pyarrow as pa
import pyarrow.fs as pafs

__all__ = ["filesystem", "absolute", "join", "exists", "makedirs", "read_json", "write_json", "read_bytes", "write_bytes",
           "write_parquet", "create_exclusive", "remove_file", "list_files", "is_hidden"]


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI pyarrow understands."""
    path = str(path)
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def absolute(path: str) -> str:
    """A local path made absolute (workers may run in another cwd); URIs are returned unchanged."""
    return str(path) if "://" in str(path) else os.path.abspath(path)


def join(base: str, *parts: str) -> str:
    base = str(base)
    if "://" in base:
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.join(rest, *parts)}"
    return os.path.join(base, *parts)


def exists(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def fingerprint(path: str) -> dict[str, int | None]:
    """What says a file changed without reading it: `{"size": bytes, "mtime_ns": ...}` (local disks
    and object stores alike; an object store's mtime is its last write). Raises FileNotFoundError."""
    fs, p = filesystem(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(path)
    return {"size": info.size, "mtime_ns": info.mtime_ns}


def makedirs(path: str) -> None:
    fs, p = filesystem(path)
    fs.create_dir(p, recursive=True)


def read_bytes(path: str) -> bytes:
    fs, p = filesystem(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def _write_atomic(path: str, write: Callable[[pa.NativeFile], None]) -> None:
    """Run `write(stream)` so that `path` appears whole or not at all.

    Local: into a hidden temp file beside `path` (`.<name>.<random>.tmp`, skipped by `list_files`),
    then renamed over `path` (atomic on POSIX). Object stores: one upload, which they publish whole.
    """
    fs, p = filesystem(path)
    parent = posixpath.dirname(p) if "://" in str(path) else os.path.dirname(p)
    if parent:
        fs.create_dir(parent, recursive=True)
    if not isinstance(fs, pafs.LocalFileSystem):
        with fs.open_output_stream(p) as f:
            write(f)
        return
    tmp = os.path.join(parent, f".{os.path.basename(p)}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with fs.open_output_stream(tmp) as f:
            write(f)
        fs.move(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_bytes(path: str, data: bytes) -> None:
    """Write atomically where the filesystem allows (local: temp file + rename)."""
    _write_atomic(path, lambda f: f.write(data))


def write_parquet(table: pa.Table, path: str) -> None:
    """`table` as one parquet file at `path`, atomically where the filesystem allows (as `write_bytes`)."""
    import pyarrow.parquet as pq

    _write_atomic(path, lambda f: pq.write_table(table, f))


def create_exclusive(path: str, data: bytes) -> bool:
    """Create `path` holding `data` unless it exists; True if this call created it.

    Local: the whole file is written under a temp name, then hard-linked to `path`, which fails if
    `path` exists (atomic: no reader sees a half-written file, no two callers both win). Object
    stores: check, then upload (best effort: two callers in the same instant may both win).
    """
    fs, p = filesystem(path)
    if not isinstance(fs, pafs.LocalFileSystem):
        if exists(path):
            return False
        write_bytes(path, data)
        return True
    os.makedirs(os.path.dirname(p), exist_ok=True)
    tmp = os.path.join(os.path.dirname(p), f".{os.path.basename(p)}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    try:
        os.link(tmp, p)
        return True
    except FileExistsError:
        return False
    finally:
        os.remove(tmp)


def remove_dir(path: str) -> None:
    """Delete a folder and everything under it (path or URI); a missing folder is not an error."""
    fs, p = filesystem(path)
    if fs.get_file_info(p).type == pafs.FileType.Directory:
        fs.delete_dir(p)


def remove_file(path: str) -> None:
    """Delete one file; a missing file is not an error."""
    fs, p = filesystem(path)
    if fs.get_file_info(p).type == pafs.FileType.File:
        fs.delete_file(p)


def read_json(path: str) -> Any:
    return json.loads(read_bytes(path))


def write_json(path: str, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def is_hidden(relative: str) -> bool:
    """True when any component of a `/`-separated relative path starts with `.` or `_` (as pyarrow,
    Spark and Hadoop treat `_SUCCESS`, `_staging/`, `.tmp` files)."""
    return any(part.startswith((".", "_")) for part in relative.split("/") if part)


def list_files(path: str, suffixes: tuple[str, ...] = ()) -> list[str]:
    """Files under `path` (recursively; or `path` itself if it is a file), sorted.

    Hidden entries are skipped: a file is left out when any component of its path *below* `path`
    starts with `.` or `_` (`labels/_rejects/a.parquet`, `logs/.cache/x.csv`, `_SUCCESS`); the
    components of `path` itself do not count. Returned paths keep `path`'s form (URI in, URIs out).
    """
    fs, p = filesystem(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(path)
    if info.type == pafs.FileType.File:
        return [str(path)]
    out = []
    for f in fs.get_file_info(pafs.FileSelector(p, recursive=True)):
        rel = f.path[len(p):].lstrip("/")
        if f.type != pafs.FileType.File or is_hidden(rel):
            continue
        if suffixes and not posixpath.basename(rel).endswith(suffixes):
            continue
        out.append(join(str(path), rel))
    return sorted(out)
