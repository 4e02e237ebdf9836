"""A training run resumes only its own checkpoints: same start, rows, loop and input files."""

import json
import logging
import os

from distillery.training.data import DataSection
from distillery.training.init import ModelInit
from distillery.training.job import RUN_KEY_FILE, _claim_run_folder, run_key
from distillery.training.loop import LoopConfig
from distillery.training.ray_train import TrainSpec


def _spec(run_dir, **loop):
    return TrainSpec(run_dir=str(run_dir), init=ModelInit(kind="layer_subset", source="minilm", layers=[0]),
                     data=DataSection(splits=["train", "unlabeled"]), loop=LoopConfig(loss="soft", **loop))


def test_the_key_changes_with_the_config_and_the_input_files_but_not_with_epochs(run_dir):
    base = run_key(_spec(run_dir))
    assert base["inputs"] > 0  # data and label files counted
    assert run_key(_spec(run_dir)) == base
    assert run_key(_spec(run_dir, epochs=5, fail_once_at_epoch=1)) == base  # extending a run resumes it
    assert run_key(_spec(run_dir, lr=3e-4))["hash"] != base["hash"]
    assert run_key(_spec(run_dir, length_bucket_batches=0))["hash"] != base["hash"]
    other = _spec(run_dir).model_copy(update={"data": DataSection(splits=["train"])})
    assert run_key(other)["hash"] != base["hash"]
    f = sorted((run_dir / "data" / "train").glob("*.parquet"))[0]
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # the file rewritten (a new data.seed)
    try:
        assert run_key(_spec(run_dir))["hash"] != base["hash"]
    finally:
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_folder_of_another_run_is_emptied_and_this_runs_kept(tmp_path, caplog):
    folder = tmp_path / "checkpoints" / "student"
    mine, theirs = {"hash": "aaaa", "inputs": 3}, {"hash": "bbbb", "inputs": 3}
    _claim_run_folder(str(folder), mine, resume=True)
    (folder / "epoch_0000").mkdir()
    _claim_run_folder(str(folder), mine, resume=True)  # the same run: checkpoints kept
    assert (folder / "epoch_0000").is_dir()
    with caplog.at_level(logging.WARNING):
        _claim_run_folder(str(folder), theirs, resume=True)
    assert not (folder / "epoch_0000").exists()
    assert "another run" in caplog.text and "aaaa" in caplog.text and "bbbb" in caplog.text
    assert json.loads((folder / RUN_KEY_FILE).read_text())["hash"] == "bbbb"
    (folder / "epoch_0000").mkdir()
    _claim_run_folder(str(folder), theirs, resume=False)  # resume off: always afresh
    assert not (folder / "epoch_0000").exists()
    legacy = tmp_path / "checkpoints" / "old"
    (legacy / "epoch_0000").mkdir(parents=True)  # checkpoints from before run keys
    _claim_run_folder(str(legacy), mine, resume=True)
    assert not (legacy / "epoch_0000").exists()
