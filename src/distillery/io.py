"""Paths that may be local or URIs (`s3://…`, `gs://…`, `file://…`), through pyarrow's filesystems.

Every stage reads and writes through these helpers so a run directory can live on object storage.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import pyarrow.fs as pafs

__all__ = ["filesystem", "absolute", "join", "exists", "makedirs", "read_json", "write_json", "read_bytes", "write_bytes", "list_files"]


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI pyarrow understands."""
    path = str(path)
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    import os

    return pafs.LocalFileSystem(), os.path.abspath(path)


def absolute(path: str) -> str:
    """A local path made absolute (workers may run in another cwd); URIs are returned unchanged."""
    import os

    return str(path) if "://" in str(path) else os.path.abspath(path)


def join(base: str, *parts: str) -> str:
    base = str(base)
    if "://" in base:
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.join(rest, *parts)}"
    import os

    return os.path.join(base, *parts)


def exists(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def makedirs(path: str) -> None:
    fs, p = filesystem(path)
    fs.create_dir(p, recursive=True)


def read_bytes(path: str) -> bytes:
    fs, p = filesystem(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    """Write atomically where the filesystem allows (local: temp file + rename)."""
    fs, p = filesystem(path)
    parent = posixpath.dirname(p) if "://" in str(path) else __import__("os").path.dirname(p)
    if parent:
        fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = p + ".tmp"
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, p)
    else:
        with fs.open_output_stream(p) as f:
            f.write(data)


def read_json(path: str) -> Any:
    return json.loads(read_bytes(path))


def write_json(path: str, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def list_files(path: str, suffixes: tuple[str, ...] = ()) -> list[str]:
    """Files under `path` (recursively; or `path` itself if it is a file), sorted, hidden files skipped.

    Returned paths keep `path`'s form (URI in, URIs out).
    """
    fs, p = filesystem(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(path)
    if info.type == pafs.FileType.File:
        return [str(path)]
    out = []
    for f in fs.get_file_info(pafs.FileSelector(p, recursive=True)):
        name = posixpath.basename(f.path)
        if f.type != pafs.FileType.File or name.startswith((".", "_")):
            continue
        if suffixes and not name.endswith(suffixes):
            continue
        rel = f.path[len(p):].lstrip("/")
        out.append(join(str(path), rel))
    return sorted(out)
