"""The pipeline's typed config (`jobs/configs/demo.yaml`): its own sections, and one section per stage
that runs a job, holding that job's config fields.

    run_dir, stages, force, ray, data, serve        the pipeline's own
    teacher, label, student, student_direct, …      one per `distillery.stages.STAGES` entry with a job

The per-job sections are made from the stage registry, so a stage added there gets its section here.
This module sits below `pipeline` (ordering, skipping) and `pipeline_stages` (the runners), which
both read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Union

from pydantic import Discriminator, Field, Tag, create_model, field_validator, model_validator

from distillery.compress.size import BidSection
from distillery.config import AbsolutePath, Section, validate_config
from distillery.data.split import LogsConfig
from distillery.data.synthetic import SyntheticConfig
from distillery.loadtest import BID_COUNTS
from distillery.ray_runtime import RaySection
from distillery.stages import JOBS, STAGES, Stage

__all__ = ["PipelineConfig", "ServeStageConfig", "BidCheck", "pipeline_config_class"]


class ServeStageConfig(Section):
    """The serve stage: /predict at saturation, then OpenRTB bids at light load by number of
    candidates, then a bids/s saturation sweep, all over HTTP on 127.0.0.1 (`distillery.loadtest`)."""

    app: dict[str, Any] = Field(default_factory=dict, description="serving app args (see serve/serve_config.yaml); model_dir is set to <run_dir>/onnx, bidder.catalog to the generated one")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port on 127.0.0.1 for the load test")
    requests: int = Field(2000, ge=1, description="/predict requests in the saturation load test (bounded)")
    candidates: int = Field(8, ge=1, description="candidate ads per /predict request (the bidder pattern)")
    concurrency: int = Field(8, ge=1, description="concurrent /predict connections: its p50/p99 are at saturation, queueing included")
    max_seconds: float = Field(120, gt=0, description="the /predict load test stops after this long whatever is left")
    openrtb_requests: int = Field(200, ge=0, description="fresh OpenRTB bids timed per candidate count at light load (one client, sequential); 0 skips the bid tests")
    bid_counts: list[int] = Field(default_factory=lambda: list(BID_COUNTS), min_length=1, description="eligible candidates per bid, ascending; the catalog written to <run_dir>/serve/ holds max(bid_counts) creatives in size groups so a bid's formats select exactly each count")
    bid_tmax_ms: int = Field(100, ge=1, le=60_000, description="the bid requests' tmax, ms (the replica answers no-bid when it would miss it)")
    bid_max_seconds: float = Field(6, gt=0, description="time limit of each count's light-load run; fewer bids are timed when it runs out (requests says how many)")
    saturation_candidates: int = Field(128, ge=1, description="candidates per bid in the saturation sweep; one of bid_counts")
    saturation_concurrency: list[int] = Field(default_factory=lambda: [1, 2, 4], description="closed-loop clients of the saturation sweep, raised in this order until p99 exceeds bid_tmax_ms; [] skips it")
    saturation_seconds: float = Field(3.0, gt=0, description="seconds per saturation level")

    @model_validator(mode="after")
    def _bid_counts(self) -> "ServeStageConfig":
        counts = self.bid_counts
        if counts[0] < 1 or any(b <= a for a, b in zip(counts, counts[1:])) or counts[-1] > 100_000:
            raise ValueError(f"bid_counts: expected ascending distinct numbers from 1 to 100000, got {counts}")
        if self.saturation_concurrency and self.saturation_candidates not in counts:
            raise ValueError(f"saturation_candidates: {self.saturation_candidates} is not one of bid_counts {counts}")
        if any(c < 1 for c in self.saturation_concurrency):
            raise ValueError(f"saturation_concurrency: expected client counts ≥ 1, got {self.saturation_concurrency}")
        return self


class BidCheck(BidSection):
    calls: int = Field(200, ge=10, description="timed bids of the student stage's check (fewer when they pass 10 s)")


def _data_source(value: Any) -> str:
    """`data.source`: synthetic (the default, and every config written before logs existed) or logs."""
    if isinstance(value, dict):
        return str(value.get("source", "synthetic"))
    return getattr(value, "source", "synthetic")


# `source: synthetic` generates (SyntheticConfig, unchanged, so existing runs keep their stage keys);
# `source: logs` splits the user's own log in time order (`distillery data split`).
DataConfig = Annotated[Union[Annotated[SyntheticConfig, Tag("synthetic")], Annotated[LogsConfig, Tag("logs")]],
                       Discriminator(_data_source, custom_error_type="data_source",
                                     custom_error_message="source: expected 'synthetic' (the default) or 'logs'")]


class PipelineSections(Section):
    """The pipeline's own sections; `pipeline_config_class` adds one per job stage."""

    run_dir: AbsolutePath = Field("runs/demo", description="run directory (local path or URI); every stage writes under it")
    stages: list[str] = Field(default_factory=lambda: list(STAGES), description="stages to run, in pipeline order")
    force: bool = Field(False, description="re-run stages whose outputs are complete")
    ray: RaySection = Field(default_factory=RaySection, description="Ray connection / embedded resources, shared by all stages")
    data: DataConfig = Field(default_factory=SyntheticConfig, description="ad logs: synthetic (default) or `source: logs` with path, format, label_column, time_column, fractions")
    serve: ServeStageConfig = Field(default_factory=ServeStageConfig, description="Ray Serve load test")
    bid: BidCheck | None = Field(None, description="the bid the student must answer in (budget_ms, candidates, stat): the student stage measures "
                                 "its shape on this machine first and stops, naming the budget it needs, when it does not fit; null: no check")

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, v: list[str]) -> list[str]:
        unknown = [s for s in v if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stages {unknown}; expected names from {list(STAGES)}")
        return [s for s in STAGES if s in v]

    @field_validator("data", mode="before")
    @classmethod
    def _synthetic_source(cls, v: Any) -> Any:
        # `source: synthetic` may be written out; SyntheticConfig itself has no such field
        if isinstance(v, dict) and v.get("source") == "synthetic":
            return {k: x for k, x in v.items() if k != "source"}
        return v

    @model_validator(mode="after")
    def _validate_stage_configs(self) -> "PipelineSections":
        # Fail at load time, naming the field, rather than after an hour of earlier stages.
        for name in type(self).model_fields:
            if name in STAGES and STAGES[name].job:
                self.stage_config(name)
        return self

    def stage_config(self, stage: str) -> Any:
        """The typed config of one stage's job, with the pipeline's run_dir and Ray section."""
        cls = JOBS[STAGES[stage].job].config_class()
        data = {**getattr(self, stage), "run_dir": self.run_dir}
        if "ray" in cls.model_fields:
            data["ray"] = self.ray.model_dump()
        return validate_config(cls, data, f"pipeline.{stage}")


def pipeline_config_class(stages: Mapping[str, Stage]) -> type[PipelineSections]:
    """The pipeline config with a section, `<stage>: {job config fields}`, for each of `stages` that runs a job."""
    sections: dict[str, Any] = {name: (dict[str, Any], Field(default_factory=dict, description=s.doc or f"{s.job} job config fields"))
                                for name, s in stages.items() if s.job}
    return create_model("PipelineConfig", __base__=PipelineSections, __module__=__name__, **sections)


PipelineConfig = pipeline_config_class(STAGES)
