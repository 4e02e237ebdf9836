"""The `distillery` command: a thin shell over library calls.

    distillery data generate --out runs/demo/data [--rows-train N ...]
    distillery data inspect PATH [--format auto] [--label-column NAME] --json
    distillery data split PATH --out DIR [--format F] [--label-column NAME] [--time-column NAME] [--fractions 0.5,0.3,0.2] [--json]
    distillery teacher  --config jobs/configs/teacher.yaml [key=value ...]
    distillery label    --config jobs/configs/label.yaml   [key=value ...]
    distillery train    --config jobs/configs/train.yaml   [key=value ...]
    distillery evaluate --config jobs/configs/evaluate.yaml [key=value ...]
    distillery compress --config jobs/configs/compress.yaml [key=value ...]
    distillery size --budget-ms X --candidates N [--stat p99|p50] [--calls 200] [--out runs/size]
    distillery size --budget-ms X --batch 1 --seq-len L [--provider cpu|cuda]
    distillery serve --model-dir DIR [--host 127.0.0.1] [--port 8000] [--config FILE] [--ingress auto|haproxy|proxy]
    distillery pipeline --config jobs/configs/demo.yaml [--force] [key=value ...]
    distillery promote --run-dir runs/demo [--version V] [--variant int8] [--address HOST:PORT]

Each job subcommand (`distillery.stages.JOBS`) loads one typed config (YAML + overrides) and calls
the job's `run(cfg)`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from distillery.config import ConfigError, load_config
from distillery.stages import JOBS, Job

__all__ = ["main", "add_job_arguments", "load_job_config"]


def add_job_arguments(parser: argparse.ArgumentParser, job: Job) -> None:
    """`--config FILE [--force] [key=value ...]`: the arguments of a job, here and in `python -m jobs.<name>`."""
    parser.add_argument("--config", required=True, help="YAML config file")
    if job.force_flag:
        parser.add_argument("--force", action="store_true", help="re-run stages whose outputs are complete")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. batch_size=64")


def load_job_config(job: Job, args: argparse.Namespace):
    """The job's typed config from `--config` and the overrides (`--force` is the override force=true)."""
    overrides = list(args.overrides) + (["force=true"] if getattr(args, "force", False) else [])
    return load_config(job.config_class(), args.config, overrides)


def _run_job(args: argparse.Namespace) -> int:
    job = JOBS[args.command]
    result = job.run_function()(load_job_config(job, args))
    if isinstance(result, dict):
        print(json.dumps(result, indent=2, default=str))
    return 0


def _data(args: argparse.Namespace) -> int:
    if args.data_command == "inspect":
        from distillery.data.readers import inspect_logs

        try:
            summary = inspect_logs(args.path, fmt=args.format, label_column=args.label_column)
        except ValueError as err:  # a missing label column, an unreadable format: say which
            print(f"error: {err}", file=sys.stderr)
            return 2
        if args.json:
            print(json.dumps(summary, default=str))
        else:
            for key, value in summary.items():
                print(f"{key:>12}: {value}")
        return 0
    if args.data_command == "split":
        return _data_split(args)
    if args.data_command == "generate":
        from distillery.data.synthetic import SyntheticConfig, write_splits

        cfg = load_config(SyntheticConfig, args.config, args.overrides)
        print(json.dumps(write_splits(cfg, args.out), indent=2))
        return 0
    raise AssertionError(args.data_command)


def _data_split(args: argparse.Namespace) -> int:
    from distillery.config import validate_config
    from distillery.data.split import LogsConfig, split_logs

    try:
        fractions = [float(f) for f in args.fractions.split(",")]
    except ValueError:
        print(f"error: --fractions: expected three numbers like 0.5,0.3,0.2, got {args.fractions!r}", file=sys.stderr)
        return 2
    cfg = validate_config(LogsConfig, {"path": args.path, "format": args.format, "label_column": args.label_column,
                                       "time_column": args.time_column, "fractions": fractions,
                                       "files_per_split": args.files_per_split}, "data split")
    try:
        summary = split_logs(cfg, args.out, progress=lambda line: print(line, file=sys.stderr, flush=True))
    except ValueError as err:  # a missing label/time column, too few rows: say which
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        for split in ("train", "unlabeled", "test"):
            s = summary[split]
            print(f"{split:>10}: {s['rows']} rows, {s['clicks']} clicks, {s['files']} files, time {s['time_range']}")
        print(f"{'rejected':>10}: {summary['rejected']} {summary['reject_reasons'] or ''}")
        print(f"{'order':>10}: {summary['order']} (time column {summary['time_column']})")
    return 0


def _size(args: argparse.Namespace) -> int:
    from distillery.compress.size import cli_main

    return cli_main(args)


def _serve(args: argparse.Namespace) -> int:
    from distillery.serving.app import cli_main

    return cli_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distillery", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="generate, inspect or split ad logs")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    ins = data_sub.add_parser("inspect", help="load logs and print rows, clicks, columns, a sample text")
    ins.add_argument("path", help="file, folder or URI")
    ins.add_argument("--format", default="auto",
                     choices=["auto", "parquet", "csv", "tsv", "jsonl", "criteo", "avazu", "openrtb"])
    ins.add_argument("--label-column", default=None, help="name of the click column in a generic CSV/TSV/JSONL")
    ins.add_argument("--json", action="store_true", help="print one JSON object")
    spl = data_sub.add_parser("split", help="split your own log into train/unlabeled/test parquet, in time order")
    spl.add_argument("path", help="log file, folder or URI")
    spl.add_argument("--out", required=True, help="output folder, e.g. runs/mine/data (local or URI)")
    spl.add_argument("--format", default="auto",
                     choices=["auto", "parquet", "csv", "tsv", "jsonl", "criteo", "avazu", "openrtb"])
    spl.add_argument("--label-column", default=None, help="name of the click column in a generic CSV/TSV/JSONL")
    spl.add_argument("--time-column", default=None, help="column to order by (default: ts, else timestamp/time/...)")
    spl.add_argument("--fractions", default="0.5,0.3,0.2", help="train,unlabeled,test shares (sum 1)")
    spl.add_argument("--files-per-split", type=int, default=4, help="parquet files per split")
    spl.add_argument("--json", action="store_true", help="print one JSON object")
    gen = data_sub.add_parser("generate", help="write synthetic train/unlabeled/test splits as parquet")
    gen.add_argument("--out", required=True, help="output folder (local or URI)")
    gen.add_argument("--config", default=None, help="YAML with SyntheticConfig fields")
    gen.add_argument("overrides", nargs="*", help="key=value overrides, e.g. seed=3")
    data.set_defaults(func=_data)

    for job in JOBS.values():
        p = sub.add_parser(job.name, help=job.help)
        add_job_arguments(p, job)
        p.set_defaults(func=_run_job)

    size = sub.add_parser("size", help="largest student whose measured latency fits a budget (per bid of N candidates)")
    size.add_argument("--budget-ms", type=float, required=True,
                      help="latency budget, ms (p99 unless --stat p50): per bid with --candidates, per session.run otherwise")
    size.add_argument("--candidates", type=int, default=None,
                      help="ads scored per bid: time two-tower and cross-encoder students on bids of this many")
    size.add_argument("--calls", type=int, default=None, help="timed bids (calls) per student (default: config calls, 200)")
    size.add_argument("--batch", type=int, default=None, help="without --candidates: rows per session.run (default 1)")
    size.add_argument("--seq-len", type=int, default=None, help="without --candidates: tokens per row (default 64)")
    size.add_argument("--provider", choices=["cpu", "cuda"], default="cpu", help="cuda: without --candidates only")
    size.add_argument("--stat", choices=["p50", "p99"], default="p99")
    size.add_argument("--out", default="runs/size", help="run directory for the table (and, in bid mode, the built students)")
    size.add_argument("--config", default=None, help="YAML with the candidate grid (SizeConfig)")
    size.set_defaults(func=_size)

    serve = sub.add_parser("serve", help="serve an ONNX model folder on Ray Serve")
    serve.add_argument("--model-dir", required=True, help="ONNX folder written by `distillery compress`")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--config", default=None, help="serve config YAML (default serve/serve_config.yaml's app args)")
    serve.add_argument("--ingress", choices=("auto", "haproxy", "proxy"), default="auto",
                       help="auto: HAProxy + direct ingress where an HAProxy binary runs, else Serve's proxy")
    # internal: set by `distillery serve` for the server process it starts (serving.app)
    serve.add_argument("--parent-fd", type=int, default=None, help=argparse.SUPPRESS)
    serve.set_defaults(func=_serve)

    from distillery.serving import promote

    prom = sub.add_parser("promote", help="canary a built model version, make it current, hot-swap the running app")
    promote.add_arguments(prom)
    prom.set_defaults(func=promote.cli_main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides after a flag (`--force key=value`): argparse leaves them over; they are
    # overrides like the ones before it (argparse's intermixed parsing does not take subcommands)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*(args.overrides or []), *extra]
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
