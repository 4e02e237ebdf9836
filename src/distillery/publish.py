"""Publishing a model folder, in one place: a reader sees the old folder or the new one, never a mix.

    with staged_folder("runs/demo/student") as tmp:         # write the whole model into tmp
        model.save_pretrained(tmp)
    # clean exit: tmp becomes runs/demo/student in one atomic exchange; an error or a kill leaves
    # the old folder as it was (a killed writer's staging folder is removed by the next writer)

    final = publish_version(build, "runs/demo/onnx", version="3f2a", keep=3)
    # build moved to runs/demo/onnx.versions/<time>-3f2a/ (immutable), then the relative link
    # runs/demo/onnx switched to it by one rename; versions beyond the newest 3 pruned (never the current)

    move_folder(build, "runs/demo/onnx.rejected")          # a finished local folder replaces dest

Every job that writes a model folder (training, the two-tower teacher, compress, the teachers'
model cache) goes through these. Local folders are written in a sibling of `dest` (same filesystem,
so a rename moves them) and swapped in with Linux's `renameat2(RENAME_EXCHANGE)`: the old folder
and the new trade places in one step, then the old one is deleted. Where the kernel or filesystem
lacks it, two renames, with a window of microseconds where `dest` is absent. URIs (object stores
have neither renames of folders nor links): the old files are removed and the folder uploaded, so a
reader may see it partial while the upload runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
import tempfile
import time
from typing import Iterator

from distillery import io

__all__ = ["staged_folder", "staging", "move_folder", "publish_version", "prune_versions", "switch_current", "upload_folder"]

log = logging.getLogger(__name__)

_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


@contextlib.contextmanager
def staged_folder(dest: str, *, first_wins: bool = False) -> Iterator[str]:
    """An empty local folder to write a model into; on a clean exit it becomes `dest` at once.

    On an exception nothing changes at `dest` and the staging folder is removed. `first_wins`: for
    writers racing to fill the same content (a cache): each writes its own hidden sibling and the
    first to finish becomes `dest`; the others discard theirs."""
    if "://" in str(dest):
        with staging(dest) as tmp:
            yield tmp
            upload_folder(tmp, dest)
        return
    with staging(dest, unique=first_wins) as tmp:
        yield tmp
        if first_wins and os.path.lexists(_local(dest)):
            log.info("%s: another writer published it first; keeping its copy", dest)
            return
        _swap_in(tmp, _local(dest))


@contextlib.contextmanager
def staging(dest: str, *, unique: bool = False) -> Iterator[str]:
    """A fresh, empty local folder for building what will be published at `dest`, removed on exit
    whatever happened (unless it was moved away). Local `dest`: `<dest>.staging` beside it, on the
    same filesystem so a rename publishes it (a killed writer's is cleared here); `unique`: a hidden
    sibling of its own, for concurrent writers. URI `dest`: a local temp folder."""
    if "://" in str(dest):
        path = tempfile.mkdtemp(prefix="publish-")
    else:
        dest = _local(dest)
        parent, name = os.path.split(dest)
        os.makedirs(parent, exist_ok=True)
        if unique:
            path = tempfile.mkdtemp(dir=parent, prefix=f".{name}.partial-")
        else:
            path = f"{dest}.staging"
            shutil.rmtree(path, ignore_errors=True)  # left by a writer that was killed
            os.makedirs(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def move_folder(local: str, dest: str) -> None:
    """Make the finished local folder `local` be `dest` (path or URI), replacing what was there.
    Local: a rename when both are on one filesystem, else a copy into a staging sibling first."""
    if "://" in str(dest):
        upload_folder(local, dest)
        return
    dest = _local(dest)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    if not _same_device(local, os.path.dirname(dest)):
        with staged_folder(dest) as staging:
            shutil.copytree(local, staging, dirs_exist_ok=True)
        shutil.rmtree(local, ignore_errors=True)
        return
    _swap_in(local, dest)


def publish_version(local: str, dest: str, version: str, keep: int) -> str:
    """Make the build at `local` the current model `dest`; returns the folder `dest` now names.

    Local: `local` is moved to `<dest>.versions/<time>-<version>/` (immutable from here on), then
    `dest`, a relative symlink, is switched to it by one rename, so a reader of `dest` sees the old
    model or the new one, and a replica that loaded a version keeps reading that version's files. A
    real folder left at `dest` by a release before versions becomes a version first. Versions beyond
    the newest `keep` are removed, the current one never. URIs: an upload over `dest`."""
    if "://" in str(dest):
        upload_folder(local, dest)
        return dest
    dest = _local(dest)
    versions = f"{dest}.versions"
    os.makedirs(versions, exist_ok=True)
    if os.path.isdir(dest) and not os.path.islink(dest):  # published before versions existed
        stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(os.path.getmtime(dest)))
        os.replace(dest, os.path.join(versions, f"{stamp}-earlier"))
    final = os.path.join(versions, f"{time.strftime('%Y%m%dT%H%M%S')}-{version}")
    if os.path.exists(final):  # the same version twice within a second
        final = f"{final}-{os.getpid()}-{time.monotonic_ns()}"
    move_folder(local, final)
    before = switch_current(dest, final)
    # the version named before may still be served (a running app switches at `distillery promote`)
    prune_versions(versions, keep, current=final, keep_also=before)
    log.info("%s now names %s", dest, final)
    return final


def switch_current(link: str, target: str) -> str | None:
    """Point the relative symlink `link` at the folder `target` by one rename(2) over the old link
    (a reader sees the old folder or the new one, never neither); returns the folder it named
    before (None: none)."""
    before = os.path.realpath(link) if os.path.lexists(link) else None
    if before == os.path.realpath(target):
        return before
    tmp = f"{link}.link-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)
    os.symlink(os.path.relpath(target, os.path.dirname(link)), tmp)
    os.replace(tmp, link)
    return before


def prune_versions(versions: str, keep: int, current: str | None = None, keep_also: str | None = None) -> list[str]:
    """Remove all but the newest `keep` folders of `versions` (names sort by time), never `current`
    (the folder the link names, whatever its age: a rollback may point at an older one) nor
    `keep_also` (the one it named before). Returns the removed paths."""
    if keep < 1:
        raise ValueError(f"keep: {keep}; at least the current version is kept (>= 1)")
    spared = {os.path.realpath(p) for p in (current, keep_also) if p}
    removed = []
    for old in sorted(os.listdir(versions))[:-keep]:
        path = os.path.join(versions, old)
        if os.path.realpath(path) not in spared:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def upload_folder(local: str, dest: str) -> None:
    """Copy the local folder `local` over `dest` (path or URI), removing `dest`'s old files first so
    no file of an earlier model mixes with the new ones. Not atomic: for object stores."""
    import pyarrow.fs as pafs

    fs, p = io.filesystem(dest)
    if isinstance(fs, pafs.LocalFileSystem) and os.path.abspath(local) == p:
        return
    if fs.get_file_info(p).type == pafs.FileType.Directory:
        fs.delete_dir_contents(p)
    fs.create_dir(p, recursive=True)
    pafs.copy_files(local, p, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def _local(path: str) -> str:
    return os.path.abspath(str(path).rstrip("/"))


def _same_device(a: str, b: str) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def _exchange(a: str, b: str) -> bool:
    """Swap the paths `a` and `b` in one step (Linux renameat2 RENAME_EXCHANGE); False where the
    platform, kernel or filesystem cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"exchanging {a} and {b}: {os.strerror(err)}")


def _swap_in(src: str, dest: str) -> None:
    """Make the folder `src` be `dest` (same filesystem); the folder that was `dest` is deleted."""
    if not os.path.lexists(dest):
        os.rename(src, dest)
        return
    if os.path.islink(dest) or not os.path.isdir(dest):  # not a folder to trade places with
        os.remove(dest)
        os.rename(src, dest)
        return
    if _exchange(src, dest):
        shutil.rmtree(src)  # now the old folder
        return
    old = f"{dest}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.rename(dest, old)
    os.rename(src, dest)
    shutil.rmtree(old, ignore_errors=True)
