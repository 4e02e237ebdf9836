"""python -m jobs.label --config jobs/configs/label.yaml [key=value ...]

Label ad logs with teacher actors on Ray Data. Runs on an embedded Ray when none is running, or on a
cluster: `ray job submit --working-dir . -- python -m jobs.label --config jobs/configs/label.yaml`.
"""

import sys

from jobs._entry import run_job

if __name__ == "__main__":
    sys.exit(run_job("label", doc=__doc__))
