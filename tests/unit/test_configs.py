"""Every shipped YAML parses into its typed config (a broken shipped config fails here, not in a job)."""

import json
from pathlib import Path

import pytest

from distillery.config import ConfigError, RunSection, load_config, parse_overrides
from distillery.stages import JOBS, STAGES, load

REPO = Path(__file__).resolve().parents[2]

# file-name prefix -> config class: each job's own name (the stage registry), then the configs that
# are no job's; the longest matching prefix wins
CONFIG_CLASSES = {
    **{name: job.config for name, job in JOBS.items()},
    "size": "distillery.compress.size:SizeConfig",
    "demo": JOBS["pipeline"].config,
    "synthetic": "distillery.data.synthetic:SyntheticConfig",
}


def _class_for(path: Path):
    prefix = max((p for p in CONFIG_CLASSES if path.stem.startswith(p)), key=len, default=None)
    assert prefix, f"{path.name}: no config class registered in CONFIG_CLASSES"
    return load(CONFIG_CLASSES[prefix])


def _job_configs(cfg) -> list:
    """`cfg` itself, or each stage's job config of a pipeline config."""
    if hasattr(cfg, "stage_config"):
        return [cfg.stage_config(name) for name, stage in STAGES.items() if stage.job]
    return [cfg]


@pytest.mark.parametrize("path", sorted((REPO / "jobs" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_parses(path):
    cfg = load_config(_class_for(path), path)
    assert cfg.model_dump()
    for job_cfg in _job_configs(cfg):  # `{run_dir}` is substituted once, as the config loads
        assert "{run_dir}" not in json.dumps(job_cfg.model_dump(mode="json")), type(job_cfg).__name__


def test_overrides_are_typed_and_nested():
    assert parse_overrides(["a.b=3", "a.c=0.5", "d=[1, 2]", "e=text", "f=true"]) == {
        "a": {"b": 3, "c": 0.5}, "d": [1, 2], "e": "text", "f": True}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])


def test_unknown_and_invalid_fields_are_named(tmp_path):
    from distillery.labeling import LabelConfig

    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: {kind: hf-classifier}\nactors: {num_cpu: 1}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: actors.num_cpu: Extra inputs"):
        load_config(LabelConfig, bad)
    with pytest.raises(ConfigError, match="format"):
        load_config(LabelConfig, None, ["teacher.kind=hf-classifier", "format=xml"])
    with pytest.raises(ConfigError, match="teacher"):
        load_config(LabelConfig, None, [])
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(LabelConfig, bad)


def test_run_dir_is_substituted_once_as_a_job_config_loads():
    from distillery.evaluate import EvaluateConfig
    from distillery.labeling import LabelConfig
    from distillery.training.job import TrainJobConfig

    label = load_config(LabelConfig, REPO / "jobs/configs/label.yaml", ["run_dir=runs/x/"])
    assert label.inputs == ["runs/x/data/train", "runs/x/data/unlabeled"]
    assert (label.output, label.teacher.model) == ("runs/x/labels", "runs/x/teacher")  # nested configs too

    train = load_config(TrainJobConfig, None, ["run_dir=runs/x", "data.labels_dir={run_dir}/labels"])
    run_dir = str(Path("runs/x").absolute())  # Ray Train workers do not run in the driver's cwd
    assert train.run_dir == "runs/x"
    assert (train.init.source, train.data.labels_dir) == (f"{run_dir}/teacher", f"{run_dir}/labels")

    evaluate = EvaluateConfig(run_dir="s3://bucket/runs/x")  # built directly, not loaded: the same
    assert evaluate.models["student"] == "s3://bucket/runs/x/student"
    assert (evaluate.onnx_dir, evaluate.report) == ("s3://bucket/runs/x/onnx", "s3://bucket/runs/x/report.json")


def test_every_job_config_works_in_a_run_dir():
    for name, job in JOBS.items():
        if name != "pipeline":
            assert issubclass(job.config_class(), RunSection), f"{name}: {job.config} does not substitute {{run_dir}}"


@pytest.mark.parametrize("job, field, bad", [
    ("train", "output", ".."), ("train", "output", "/tmp/x"), ("train", "output", "a/b"),
    ("teacher", "output", "."), ("compress", "out", "../onnx"), ("compress", "out", "_stages"),
])
def test_an_output_name_is_one_folder_inside_the_run(job, field, bad):
    """A job replaces its output folder: `output=..` used to delete the run directory before
    training, `output=/tmp/x` that absolute path (issue 27's review)."""
    from distillery.config import ConfigError, load_config
    from distillery.stages import JOBS

    with pytest.raises(ConfigError, match=field):
        load_config(JOBS[job].config_class(), None, [f"{field}={bad}"])
    assert getattr(load_config(JOBS[job].config_class(), None, [f"{field}=student_v2"]), field) == "student_v2"
