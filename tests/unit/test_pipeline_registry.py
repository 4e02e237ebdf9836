"""Every entry point reads the one stage/job registry (`distillery.stages`): a job added there is a
`distillery` command and a `python -m jobs.<name>` shell, a stage added there is a section of the
pipeline config and a step the pipeline runs, marks and skips. No Ray: the stages here need none."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import Field

from distillery import cli, pipeline, stages
from distillery.config import ConfigError, RunSection, load_config, validate_config
from distillery.pipeline_config import PipelineConfig, pipeline_config_class
from distillery.report_charts import stage_order
from jobs._entry import run_job

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- a job and a stage added in a test

class EchoConfig(RunSection):
    greeting: str = Field("hello", description="what the job writes")
    out: str = Field("{run_dir}/echo.json", description="where it writes it")
    force: bool = Field(False, description="set by --force")


CALLS: list[EchoConfig] = []


def echo(cfg: EchoConfig) -> dict:
    CALLS.append(cfg)
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(json.dumps({"greeting": cfg.greeting}))
    return {"greeting": cfg.greeting, "out": cfg.out}


def echo_summary(result: dict) -> str:
    return f"echo said {result['greeting']}"


def run_echo_stage(cfg) -> dict:
    return echo(cfg.stage_config("echo_stage"))


@pytest.fixture
def echo_job(monkeypatch):
    CALLS.clear()
    monkeypatch.setitem(stages.JOBS, "echo", stages.Job(
        "echo", f"{__name__}:EchoConfig", f"{__name__}:echo", "write a greeting", force_flag=True,
        summary=f"{__name__}:echo_summary"))
    monkeypatch.setitem(stages.STAGES, "echo_stage", stages.Stage(
        "echo_stage", "echo", f"{__name__}:run_echo_stage", ("echo.json",), "EchoConfig fields", needs_ray=False))


def test_a_job_added_to_the_registry_is_a_cli_command(echo_job, tmp_path, capsys):
    config = tmp_path / "echo.yaml"
    config.write_text("greeting: hi\n")
    assert cli.main(["echo", "--config", str(config), "--force", f"run_dir={tmp_path}"]) == 0
    (cfg,) = CALLS
    assert (cfg.greeting, cfg.force, cfg.out) == ("hi", True, f"{tmp_path}/echo.json")
    assert json.loads(capsys.readouterr().out) == {"greeting": "hi", "out": f"{tmp_path}/echo.json"}
    assert cli.main(["echo", "--config", str(config), "greting=yo"]) == 2
    assert "greting" in capsys.readouterr().err


def test_a_job_added_to_the_registry_runs_from_the_jobs_shell(echo_job, tmp_path, capsys):
    config = tmp_path / "echo.yaml"
    config.write_text(f"run_dir: {tmp_path}\n")
    assert run_job("echo", ["--config", str(config), "greeting=yo"]) == 0
    assert capsys.readouterr().out.strip() == "echo said yo"  # the job's summary
    assert run_job("echo", ["--config", str(config), "greting=yo"]) == 2
    assert "config error" in capsys.readouterr().err and not CALLS[1:]


def test_a_stage_added_to_the_registry_is_configured_run_marked_and_skipped(echo_job, tmp_path, capsys):
    config_class = pipeline_config_class(stages.STAGES)
    base = {"run_dir": str(tmp_path), "label": {"teacher": {"kind": "hf-classifier"}}}  # label has no default teacher
    cfg = validate_config(config_class, {**base, "stages": ["echo_stage"], "echo_stage": {"greeting": "hi"}})
    assert cfg.stage_config("echo_stage").out == f"{tmp_path}/echo.json"
    with pytest.raises(ConfigError, match="pipeline.echo_stage: greting"):  # checked as the pipeline config loads
        validate_config(config_class, {**base, "echo_stage": {"greting": "hi"}})

    pipeline.run(cfg)
    assert [c.greeting for c in CALLS] == ["hi"]
    marker = json.loads((tmp_path / "_stages" / "echo_stage.json").read_text())
    assert marker["outputs"] == {"greeting": "hi", "out": f"{tmp_path}/echo.json"}
    pipeline.run(cfg)  # its marker matches and its output exists: skipped
    assert len(CALLS) == 1 and "echo_stage: complete, skipped" in capsys.readouterr().out
    (tmp_path / "echo.json").unlink()
    pipeline.run(cfg)  # an output gone: run again
    pipeline.run(cfg.model_copy(update={"force": True}))
    assert len(CALLS) == 3


# ---------------------------------------------------------------- the registry as shipped

@pytest.mark.parametrize("name", list(stages.JOBS))
def test_every_registered_job_is_a_command_and_a_shell(name):
    job = stages.JOBS[name]
    args = cli.build_parser().parse_args([name, "--config", "x.yaml", "a=1"])
    assert (args.command, args.overrides) == (name, ["a=1"])
    assert isinstance(job.config_class(), type) and callable(job.run_function())
    shell = REPO / "jobs" / f"{name}.py"
    assert shell.exists(), f"jobs/{name}.py: the shell of registered job {name!r} is missing"
    assert f'run_job("{name}"' in shell.read_text()
    assert len(shell.read_text().splitlines()) <= 16, f"jobs/{name}.py: a shell, not code"


def test_the_pipeline_job_takes_force_and_prints_the_summary_table(monkeypatch, tmp_path, capsys):
    seen = []
    monkeypatch.setattr(pipeline, "run", lambda cfg: seen.append(cfg) or {"quality": {"teacher": {"auc": 0.75}}})
    assert run_job("pipeline", ["--config", str(REPO / "jobs/configs/demo.yaml"), "--force", f"run_dir={tmp_path}"]) == 0
    assert seen[0].force and seen[0].run_dir == str(tmp_path)
    out = capsys.readouterr().out
    assert "distillation efficiency" in out and "0.7500" in out


def test_the_pipeline_job_runs_as_a_module_and_names_a_bad_field():
    done = subprocess.run([sys.executable, "-m", "jobs.pipeline", "--config", "jobs/configs/demo.yaml", "stages=[bogus]"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "config error" in done.stderr and "stages" in done.stderr and "bogus" in done.stderr


@pytest.mark.parametrize("name", list(stages.STAGES))
def test_every_registered_stage_is_a_pipeline_step(name):
    stage = stages.STAGES[name]
    assert callable(stage.runner_function()) and stage.outputs
    cfg = load_config(PipelineConfig, REPO / "jobs/configs/demo.yaml")
    assert name in cfg.stages  # run by default, in registry order
    if stage.job:
        assert name in PipelineConfig.model_fields, f"pipeline config has no section {name!r}"
        assert isinstance(cfg.stage_config(name), stages.JOBS[stage.job].config_class())


def test_stage_order_is_the_registry_order_everywhere():
    names = list(stages.STAGES)
    assert load_config(PipelineConfig, None, [f"stages={list(reversed(names))}", "label.teacher.kind=hf-classifier"]).stages == names
    assert stage_order({"timings_s": {"total": 9, **{n: 1 for n in reversed(names)}}}) == [*names, "total"]


def test_overrides_parse_on_both_sides_of_force(monkeypatch, tmp_path):
    """`… run_dir=X --force stages=[data]` used to fail with "unrecognized arguments" in both the
    job entrypoint and the `distillery` command; the overrides after --force count like the others."""
    from distillery import cli

    seen = []
    monkeypatch.setattr(pipeline, "run", lambda cfg: seen.append(cfg) or {})
    demo = str(REPO / "jobs/configs/demo.yaml")
    assert run_job("pipeline", ["--config", demo, f"run_dir={tmp_path}", "--force", "stages=[data]"]) == 0
    assert cli.main(["pipeline", "--config", demo, f"run_dir={tmp_path}", "--force", "stages=[data, teacher]"]) == 0
    assert [(c.force, c.run_dir, c.stages) for c in seen] == [(True, str(tmp_path), ["data"]),
                                                               (True, str(tmp_path), ["data", "teacher"])]
    with pytest.raises(SystemExit):
        cli.main(["pipeline", "--config", demo, "--force", "--bogus"])
