"""Publishing a model folder (`distillery.publish`): a reader sees the old model or the new one, never
a mix or nothing, whatever happens to the writer."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from distillery.publish import move_folder, prune_versions, publish_version, staged_folder

SRC = Path(__file__).resolve().parents[2] / "src"


def _folder(path: Path, token: str) -> Path:
    """A model folder of two files that must always be read together."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "weights").write_text(token)
    (path / "config").write_text(token)
    return path


def test_a_writer_killed_mid_write_leaves_the_previous_folder_intact(tmp_path):
    dest = tmp_path / "student"
    with staged_folder(str(dest)) as tmp:
        _folder(Path(tmp), "v1")
    script = (f"import os, signal, sys; sys.path.insert(0, {str(SRC)!r})\n"
              "from distillery.publish import staged_folder\n"
              f"with staged_folder({str(dest)!r}) as tmp:\n"
              "    open(os.path.join(tmp, 'weights'), 'w').write('v2-half')\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert killed.returncode == -9, killed.stderr
    assert {f.name: f.read_text() for f in dest.iterdir()} == {"weights": "v1", "config": "v1"}
    assert (tmp_path / "student.staging").exists()  # what the killed writer left ...
    with staged_folder(str(dest)) as tmp:
        _folder(Path(tmp), "v3")
    assert not (tmp_path / "student.staging").exists()  # ... is cleared by the next writer
    assert (dest / "weights").read_text() == "v3" and sorted(os.listdir(tmp_path)) == ["student"]


def test_an_error_while_writing_changes_nothing(tmp_path):
    dest = _folder(tmp_path / "teacher", "v1")
    with pytest.raises(RuntimeError, match="disk full"), staged_folder(str(dest)) as tmp:
        _folder(Path(tmp), "v2")
        raise RuntimeError("disk full")
    assert (dest / "weights").read_text() == "v1" and sorted(os.listdir(tmp_path)) == ["teacher"]


def _read(dir_fd: int, name: str) -> str:
    with open(name, opener=lambda path, flags: os.open(path, flags, dir_fd=dir_fd)) as f:
        return f.read()


def _read_while(dest: Path, publish, rounds: int, whole_folder: bool) -> list[str]:
    """Publish `rounds` times while a reader reads `dest`'s files in a loop; returns what it saw wrong.
    `whole_folder`: it opens the folder once and reads both files from it (as a replica loads a
    version), so the two must match; else it opens each file by path (the folder must never be absent)."""
    problems: list[str] = []
    done = threading.Event()

    def read_once():
        if not whole_folder:
            return (dest / "weights").read_text(), (dest / "config").read_text()
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return _read(fd, "weights"), _read(fd, "config")
        finally:
            os.close(fd)

    def reader():
        while not done.is_set():
            try:
                a, b = read_once()
                if whole_folder and a != b:
                    problems.append(f"mixed {a} / {b}")
            except FileNotFoundError as err:
                problems.append(f"missing: {err}")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(rounds):
            publish(i)
    finally:
        done.set()
        thread.join()
    return problems


def test_replacing_a_folder_never_shows_a_reader_nothing(tmp_path):
    """Before: `rmtree(dest)` then a rename, so a reader could find no model between the two."""
    dest = _folder(tmp_path / "student", "start")

    def publish(i):
        with staged_folder(str(dest)) as tmp:
            _folder(Path(tmp), f"v{i}")

    assert _read_while(dest, publish, 150, whole_folder=False) == []
    assert (dest / "weights").read_text() == "v149"


def test_the_link_switch_is_atomic(tmp_path):
    dest = tmp_path / "onnx"

    def publish(i):
        build = _folder(tmp_path / f"build{i}", f"v{i}")
        publish_version(str(build), str(dest), f"v{i}", keep=1000)  # none pruned under the reader

    publish_version(str(_folder(tmp_path / "first", "start")), str(dest), "start", keep=1000)
    assert _read_while(dest, publish, 150, whole_folder=True) == []
    assert dest.is_symlink() and not os.path.isabs(os.readlink(dest))  # relative: the run dir can move
    assert (dest / "weights").read_text() == "v149"
    assert len(os.listdir(tmp_path / "onnx.versions")) == 151


def test_pruning_by_count_keeps_the_current_one(tmp_path):
    dest = tmp_path / "onnx"
    finals = [publish_version(str(_folder(tmp_path / f"b{i}", f"v{i}")), str(dest), f"v{i}", keep=10)
              for i in range(4)]
    versions = tmp_path / "onnx.versions"
    # roll back to the oldest, then prune to one: the newest and the current (oldest) stay
    os.symlink(os.path.relpath(finals[0], tmp_path), tmp_path / "onnx.tmp")
    os.replace(tmp_path / "onnx.tmp", dest)
    removed = prune_versions(str(versions), keep=1, current=os.path.realpath(dest))
    assert sorted(map(os.path.basename, removed)) == sorted(os.path.basename(f) for f in finals[1:3])
    assert sorted(os.listdir(versions)) == sorted(os.path.basename(f) for f in (finals[0], finals[3]))
    assert (dest / "weights").read_text() == "v0"
    publish_version(str(_folder(tmp_path / "b4", "v4")), str(dest), "v4", keep=2)
    # the newest two, and v0: current until this switch, so maybe still served until a promotion
    assert sorted(os.listdir(versions)) == sorted([os.path.basename(finals[0]), os.path.basename(finals[3]),
                                                   *(n for n in os.listdir(versions) if n.endswith("-v4"))])
    assert len(os.listdir(versions)) == 3 and (dest / "weights").read_text() == "v4"
    with pytest.raises(ValueError, match="keep"):
        prune_versions(str(versions), keep=0)


def test_a_folder_published_before_versions_becomes_one(tmp_path):
    dest = _folder(tmp_path / "onnx", "old")
    publish_version(str(_folder(tmp_path / "b", "new")), str(dest), "new", keep=3)
    names = sorted(os.listdir(tmp_path / "onnx.versions"))
    assert len(names) == 2 and names[0].endswith("-earlier") and (dest / "weights").read_text() == "new"


def test_move_folder_replaces_and_a_cache_keeps_the_first_copy(tmp_path):
    dest = _folder(tmp_path / "onnx.rejected", "old")
    move_folder(str(_folder(tmp_path / "build", "new")), str(dest))
    assert (dest / "weights").read_text() == "new" and not (tmp_path / "build").exists()
    cache = tmp_path / "cache"
    with staged_folder(str(cache), first_wins=True) as first:
        with staged_folder(str(cache), first_wins=True) as second:
            _folder(Path(second), "second")
        _folder(Path(first), "first")
    assert (cache / "weights").read_text() == "second" and sorted(os.listdir(tmp_path)) == ["cache", "onnx.rejected"]
