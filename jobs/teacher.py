"""python -m jobs.teacher --config jobs/configs/teacher.yaml [key=value ...]

Fine-tune the `hf-classifier` teacher from the MiniLM backbone on the train split's clicks, with
the same Ray Train loop the students use; publishes a Hugging Face folder at <run_dir>/teacher.
"""

import sys

from distillery.training.job import TeacherJobConfig, run_teacher
from jobs._entry import run_job

if __name__ == "__main__":
    sys.exit(run_job(TeacherJobConfig, run_teacher, doc=__doc__))
