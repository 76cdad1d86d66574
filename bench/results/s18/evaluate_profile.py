"""Profile the evaluate stage in-process on a finished local run (session 18 probe).

    python bench/results/s18/evaluate_profile.py RUN_DIR

RUN_DIR: a run folder written by `make demo` (holds data-split/, check-teacher/, ...). Prints the
import time, the stage's wall time and the 35 most expensive calls by cumulative time.
"""

import cProfile
import json
import pstats
import sys
import tempfile
import time

t = time.perf_counter()
import keras  # noqa: E402,F401

from kd.config import EvalConfig, GateConfig  # noqa: E402
from kd.stages import evaluate  # noqa: E402

print("import", time.perf_counter() - t)
run = sys.argv[1]
split = json.load(open(f"{run}/data-split/executor_output.json"))["artifacts"]
sha = {k: v["artifacts"][0]["metadata"]["sha256"] for k, v in split.items()}
models = {
    "teacher": f"{run}/check-teacher/model",
    "student_distilled": f"{run}/distill-student/model",
    "student_scratch": f"{run}/train-student-scratch/model",
}
t = time.perf_counter()
prof = cProfile.Profile()
prof.enable()
evaluate(
    models,
    (f"{run}/data-split/test", sha["test"]),
    (f"{run}/data-split/validation", sha["validation"]),
    EvalConfig(),
    GateConfig(),
    tempfile.mkdtemp(),
)
prof.disable()
print("evaluate", time.perf_counter() - t)
pstats.Stats(prof).sort_stats("cumulative").print_stats(35)
