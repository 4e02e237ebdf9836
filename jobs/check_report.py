"""python -m jobs.check_report runs/demo/report.json [--allow-null]

Exits non-zero, naming each key, when a finished run's report.json lacks a key of the report contract
(`distillery.pipeline_stages.DESIGN_KEYS`) or holds null for it (a figure some stage did not measure).
Prints the report's headline (a student that learned nothing) when it has one. CI runs it after `make demo`.
"""

import argparse
import json
import sys

from distillery.pipeline_stages import missing_design_keys
from distillery.stages import STAGES


def main() -> int:
    parser = argparse.ArgumentParser(description="check report.json against the report contract's keys")
    parser.add_argument("report")
    parser.add_argument("--allow-null", action="store_true", help="a null figure (with its reason) counts as present")
    args = parser.parse_args()
    with open(args.report, encoding="utf-8") as f:
        report = json.load(f)
    stages = tuple(s for s in STAGES if s != "report")
    missing = missing_design_keys(report, stages, allow_null=args.allow_null)
    for key in missing:
        print(f"report.json: missing {key}", file=sys.stderr)
    print(f"{args.report}: {'complete' if not missing else f'{len(missing)} key(s) missing'}")
    if report.get("headline"):
        print(f"headline: {report['headline']}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
