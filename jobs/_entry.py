"""The shared shell of every job: `python -m jobs.<name> --config FILE [key=value ...]`."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable

from distillery.config import ConfigError, load_config


def run_job(config_cls: type, run: Callable[[Any], Any], argv: list[str] | None = None, doc: str = "") -> int:
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0] if doc else None)
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. batch_size=64")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(config_cls, args.config, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    run(cfg)
    return 0
