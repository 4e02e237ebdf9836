"""python -m jobs.compress --config jobs/configs/compress.yaml [key=value ...]

Prune the student, export it to ONNX, quantize (int8-dynamic / int8-static / fp16), validate against
PyTorch and the AUC quality gate, and write `<run_dir>/onnx/` with its model card. Single process (no
Ray needed); on a cluster: `ray job submit --working-dir . -- python -m jobs.compress --config ...`.
"""

import sys

from jobs._entry import run_job

if __name__ == "__main__":
    sys.exit(run_job("compress", doc=__doc__))
