"""python -m jobs.evaluate --config jobs/configs/evaluate.yaml [key=value ...]

AUC, logloss and calibration of the teacher, the students and (when exported) the ONNX variants on
the held-out test split; oracle AUC and distillation efficiency; merged into <run_dir>/report.json.
"""

import sys

from jobs._entry import run_job

if __name__ == "__main__":
    sys.exit(run_job("evaluate", doc=__doc__))
