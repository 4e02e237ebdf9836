"""The shared shell of every job: `python -m jobs.<name> --config FILE [key=value ...]`.

`<name>` is an entry of `distillery.stages.JOBS`, which says its config class and run function; the
arguments are those of `distillery <name>`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from distillery.cli import add_job_arguments, load_job_config
from distillery.config import ConfigError
from distillery.stages import JOBS, load


def run_job(name: str, argv: list[str] | None = None, doc: str = "") -> int:
    job = JOBS[name]
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0] if doc else None)
    add_job_arguments(parser, job)
    args = parser.parse_intermixed_args(argv)  # key=value overrides on both sides of --force
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_job_config(job, args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    result = job.run_function()(cfg)
    if job.summary:
        print(load(job.summary)(result), flush=True)
    return 0
