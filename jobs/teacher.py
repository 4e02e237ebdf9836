"""python -m jobs.teacher --config jobs/configs/teacher_two_tower.yaml [key=value ...]

`kind: two-tower` (teacher_two_tower.yaml): fit the two-tower teacher's click head on the train
split's clicks in this process; publishes <run_dir>/teacher/two_tower.json. `kind: fine-tune`
(teacher.yaml): fine-tune the `hf-classifier` teacher from the MiniLM backbone with the same Ray
Train loop the students use; publishes a Hugging Face folder at <run_dir>/teacher.
"""

import sys

from jobs._entry import run_job

if __name__ == "__main__":
    sys.exit(run_job("teacher", doc=__doc__))
