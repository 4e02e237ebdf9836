"""python -m jobs.pipeline --config jobs/configs/demo.yaml [--force] [key=value ...]

The whole flow on one run directory: synthetic logs → teacher (two-tower fit, or a fine-tune) → Ray Data labeling →
Ray Train distillation (+ click-only baseline) → compression and ONNX export → evaluation →
Ray Serve load test → report.json and report.html. Completed stages are skipped on a re-run.
Also runs on a cluster: `ray job submit --working-dir . -- python -m jobs.pipeline --config …`.
"""

import sys

from jobs._entry import run_job

if __name__ == "__main__":
    sys.exit(run_job("pipeline", doc=__doc__))
