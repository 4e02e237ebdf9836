"""python -m jobs.train --config jobs/configs/train.yaml [key=value ...]

Distil a student from the teacher's labels on Ray Train (or, with train_direct.yaml, train the
click-only `student_direct` baseline). Checkpoints every epoch; re-running resumes. Runs on an
embedded Ray when none is running, or on a cluster:
`ray job submit --working-dir . -- python -m jobs.train --config jobs/configs/train.yaml`.
"""

import sys

from jobs._entry import run_job

if __name__ == "__main__":
    sys.exit(run_job("train", doc=__doc__))
