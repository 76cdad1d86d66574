"""Run the pipeline on this machine through ``kfp.local``: the same components, locally.

``--runner docker`` (default) runs each stage in its own container of the project image with
networking off (``kfp.local.DockerRunner``); ``--runner subprocess`` runs the same components
in this Python environment, for machines without Docker. Everything a user can get wrong is
checked before any stage starts: the parameters (through the ``kd.config`` dataclasses), the
data source, the Docker engine and the image.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import parameters
from kd import runs
from parameters import (  # noqa: F401  (re-exported: the runner's callers use these names)
    ParameterError,
    parse_value,
    pipeline_function,
    pipeline_parameters,
    stage_configs,
    validate_params,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PIPELINE_ROOT = "runs"

# The offline demo: the shipped real sample (2,500 train / 5,000 test images) and the teacher
# shipped in kd/teachers/ (trained on the full official training set), epochs sized to finish
# in a few minutes on 2 CPU cores. The teacher_* values apply when a teacher is trained
# (--train-teacher). Every other value is the pipeline's default.
PROFILES: dict[str, dict[str, Any]] = {
    "demo": {
        "source": "sample",
        "teacher_model": "shipped",
        "teacher_epochs": 10,
        "teacher_batch_size": 32,
        "teacher_learning_rate": 0.02,
        "teacher_augment": False,
        "teacher_warmup_epochs": 1,
        # 40 epochs (20 until session 16): on 4,765 held-out training images (not the test
        # set) the distilled student gained 1.3 points from 30 to 40 epochs and the scratch
        # student 0.8 (docs/RESULTS.md section 15; a patient teacher, Beyer et al. 2022). The
        # longest that fits the demo's 180 s on a fast moment of the VM: 169 to 194 s
        # measured with the image built (four runs, RESULTS sections 15-17).
        "student_epochs": 40,
        "student_batch_size": 32,
        # The scratch student's own peak learning rate; the distilled student keeps 0.05.
        # Each student's best on 4,765 held-out training images, 3 seeds (not the test set):
        # at 40 epochs the scratch student scored 55.9 / 56.5 / 55.7 / 53.7 % at 0.0175 /
        # 0.025 / 0.035 / 0.05 (docs/RESULTS.md section 15; at 20 epochs its best was 0.035,
        # section 14); a rate that suits the distilled student only would flatter the gain.
        "scratch_learning_rate": 0.025,
        # The teacher's logits for 2 augmented views and 6 mixed views of each training
        # image, computed once. Mixed views (teacher_mixup_views, "function matching"):
        # blends of two training images that the teacher labels. On the held-out images at
        # 40 epochs the distilled student scored 61.1 % with them against 59.7 % with 4 plain
        # views; at 30 epochs 2 + 4 views gave 0.85 points less than 2 + 6, and 1 + 7 the
        # same; in a one-seed probe, mixup with mixed labels instead of the teacher made the
        # scratch student worse (docs/RESULTS.md section 15). Each view costs a teacher pass
        # (about 5 s here). The shipped teacher is flip-invariant, so each cached crop serves
        # both flips.
        "teacher_views": 2,
        "teacher_mixup_views": 6,
        "teacher_divergence_check_epoch": 0,
        "student_divergence_check_epoch": 0,
        "latency_runs": 20,
        "grid": [{"temperature": t, "alpha": a} for t in (2.0, 5.0) for a in (0.1, 0.5)],
    },
    "full": {},
}
# The run options that set parameters: --resume takes the run's own instead.
RUN_FLAGS = (
    "param",
    "teacher",
    "train_teacher",
    "data",
    "preset",
    "teacher_epochs",
    "student_epochs",
    "seed",
    "train_per_class",
    "test_per_class",
)
# The tasks of a main run that trains its teacher, in order (the gate passing).
STAGES = (
    runs.DATA_SPLIT,
    runs.TRAIN_TEACHER,
    runs.TRAIN_STUDENT_SCRATCH,
    runs.DISTILL_STUDENT,
    runs.EVALUATE,
    runs.EXPORT_MODEL,
)
# With a teacher of the user's: imported and checked instead of trained.
IMPORT_STAGES = (runs.IMPORTER, runs.CHECK_TEACHER)
# Tasks a local run never runs: the Model Registry step needs Vertex AI (parameters refuses
# registry_upload=true locally).
REMOTE_STAGES = (runs.REGISTER_MODEL,)


def stage_names(params: dict[str, Any], which: str = "main") -> tuple[str, ...]:
    """The tasks a run of these parameters executes, in order (the gate passing)."""
    teacher = IMPORT_STAGES if params.get("teacher_model") else (runs.TRAIN_TEACHER,)
    if which == "main":
        return (runs.DATA_SPLIT, *teacher, *STAGES[2:])
    distills = tuple(runs.DISTILL_STUDENT for _ in params["grid"])
    return (runs.DATA_SPLIT, *teacher, *distills, runs.SELECT_BEST_STUDENT)


def stage_teacher(value: str, root: Path) -> str:
    """Bring a teacher into the pipeline root, where every runner's tasks can read it.

    ``shipped`` is the package's teacher, a local path a ``.keras`` file or a Model folder, a
    ``gs://`` URI is downloaded. The copy goes to ``ROOT/teachers/SHA12/`` (the first 12 hex
    digits of the model file's sha256, so a rerun reuses it), with the file's provenance
    record beside it; the importer is given that copy. Returns its path ('' for none).
    """
    if not value:
        return ""
    from kd.model_folder import INFO_FILE
    from kd.stages import copy_file
    from kd.storage import gcs_download, is_gcs
    from kd.teacher import SHIPPED, model_file, sha256_file, shipped_teacher_path

    fix = (
        "pass --teacher PATH (a .keras file or a teacher Model folder of an earlier run), a "
        "gs:// URI, 'shipped', or --train-teacher to train one"
    )
    if value == SHIPPED:
        src = shipped_teacher_path()
    elif is_gcs(value):
        dl = root / "teachers" / "download"
        dl.mkdir(parents=True, exist_ok=True)
        try:
            src = gcs_download(value, dl / Path(value.rstrip("/")).name)
        except Exception as exc:
            raise RunnerError(f"teacher {value}: cannot download it ({exc}). Fix: {fix}") from exc
    else:
        src = Path(value).expanduser().resolve()
        if not src.exists():
            raise RunnerError(f"teacher {value} does not exist. Fix: {fix}")
    file = model_file(src)
    if not file.is_file():
        raise RunnerError(f"teacher {value}: no model file at {file}. Fix: {fix}")
    dest = root / "teachers" / sha256_file(file)[:12]
    target = dest / file.name
    if not target.exists():
        dest.mkdir(parents=True, exist_ok=True)
        for extra in (file.with_suffix(".json"), file.parent / INFO_FILE):
            if extra.is_file() and extra != file:
                copy_file(extra, dest / extra.name)
        copy_file(file, target)
    return str(target)


class RunnerError(ParameterError):
    """A problem found before (or while) running; one line, with the fix."""


def resolve_params(profile: str, overrides: dict[str, Any], which: str = "main") -> dict[str, Any]:
    """The profile's values, then explicit overrides, checked (:func:`parameters.resolve`)."""
    try:
        return parameters.resolve(overrides, which, base=PROFILES[profile])
    except ParameterError as exc:
        raise RunnerError(str(exc)) from exc


def check_source(source: str) -> Path | None:
    """A local data path must exist (it is mounted read-only into the containers)."""
    if source in ("sample", "keras") or source.startswith("gs://"):
        return None
    path = Path(source).expanduser().resolve()
    if not path.exists():
        raise RunnerError(
            f"data source {source!r} does not exist. Fix: pass an existing path, "
            "'sample' (shipped, offline), 'keras' (download) or a gs:// URI"
        )
    return path


def check_docker() -> Any:
    """A client of a running Docker engine, or a RunnerError saying what to do."""
    try:
        import docker
    except ImportError as exc:
        raise RunnerError(
            "the docker Python package is missing. Fix: pip install -r requirements.txt"
        ) from exc
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        raise RunnerError(
            f"no Docker engine reachable ({type(exc).__name__}). Fix: start Docker (on Debian/"
            "Ubuntu as root: docker/install_engine.sh; elsewhere Docker Desktop), or run "
            "without Docker: --runner subprocess"
        ) from exc
    return client


def check_reachable_by_container_user(root: Path) -> None:
    """As root on the host, containers run as the image's non-root user (uid 1000), which must
    be able to reach the pipeline root through every parent folder."""
    if os.getuid() != 0:
        return  # containers then run as the host user, who made the folder
    for parent in [root, *root.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            raise RunnerError(
                f"the pipeline root {root} is not reachable by the containers' non-root user: "
                f"{parent} has mode {oct(mode & 0o777)}. Fix: chmod o+x {parent}, or choose a "
                "pipeline root under a folder others can enter (the default runs/ in the repo)"
            )


OFFLINE_BASE = "kd-base:local"  # docker/make_base_image.sh's tag: this machine builds offline
ONLINE_BASE = "python:3.11-slim-bookworm"  # the Dockerfile's default BASE_IMAGE
REGISTRY = ("registry-1.docker.io", 443)


def registry_reachable(address: tuple[str, int] = REGISTRY, timeout: float = 3.0) -> bool:
    """Whether Docker Hub answers a TCP connection (no registry: no online build)."""
    import socket

    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def choose_build(
    build: str, has_offline_base: bool, has_online_base: bool, registry: Any
) -> tuple[str, str]:
    """How ``--build auto`` gets the image: (``online`` | ``offline``, why). ``registry`` is
    called only when it decides.

    The way this machine built before (the offline base image exists after ``make demo``);
    else online where the public base image is here or a registry answers; else offline (the
    base image is made with debootstrap and the wheels come from PyPI, no registry needed).
    """
    if build != "auto":
        return build, f"--build {build}"
    if has_offline_base:
        return "offline", f"{OFFLINE_BASE} exists (this machine builds offline)"
    if has_online_base:
        return "online", f"{ONLINE_BASE} is here"
    if registry():
        return "online", "a container registry answers"
    return "offline", f"no container registry reachable and no {ONLINE_BASE} image here"


def ensure_image(image: str, build: str, client: Any) -> None:
    """Get the image with docker/build.sh unless ``build`` is ``never`` (then it must exist).

    An existing image whose sources are unchanged is reused however it was built
    (``--reuse-existing``; with an explicit online/offline only one built that way counts);
    otherwise it is built the way :func:`choose_build` says.
    """

    def have(tag: str) -> bool:
        try:
            client.images.get(tag)
            return True
        except Exception:
            return False

    if build == "never":
        if not have(image):
            raise RunnerError(
                f"image {image} not found and --build never. Fix: build it "
                "with docker/build.sh (--offline without a registry)"
            )
        return
    mode, why = choose_build(build, have(OFFLINE_BASE), have(ONLINE_BASE), registry_reachable)
    cmd = ["bash", str(ROOT / "docker" / "build.sh"), "--tag", image]
    if mode == "offline":
        cmd.insert(2, "--offline")
    if build == "auto":
        cmd.append("--reuse-existing")
    print(f"[local_runner] image {image}: {' '.join(cmd[1:])} ({why})", flush=True)
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        fix = (
            "without a container registry use --build offline (make image-offline)"
            if mode == "online"
            else "check that the Debian mirror and PyPI are reachable (docker/README.md)"
        )
        raise RunnerError(f"building image {image} ({mode}) failed (see above). Fix: {fix}")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# A progress line of the library (``[distill_student] epoch 3/15 loss ...``), as the
# components print it; per-step lines stay in the log.
_STAGE_LINE = re.compile(r"^\s*\[(\w+)\] (?!.* step \d+/\d+)(.*)$")
# The last line of a Python traceback: ``kd.errors.ArtifactError: teacher ... Fix: ...``.
_ERROR_LINE = re.compile(r"^\s*((?:[\w.]+\.)?(\w*(?:Error|Exception)))(?:: (.*))?$")


class _Terminal:
    """Where a run's output goes: everything to the run's log file; to the terminal only the
    lines meant for people (stage starts and ends, epoch progress, warnings of the library).

    It stands in for ``sys.stdout`` and ``sys.stderr`` while ``kfp.local`` runs, so the
    per-task dumps (every artifact's metadata, whole confusion matrices) and library logs
    reach the log file only; ``verbose`` sends them to the terminal as well. It remembers the
    last exception line of each task's output: the failing stage's own reason.
    """

    def __init__(self, log_path: Path, terminal: Any, verbose: bool = False) -> None:
        self.log_path = log_path
        self.file = log_path.open("a", encoding="utf-8")
        self.terminal, self.verbose = terminal, verbose
        self.task: str | None = None
        self.errors: dict[str, str] = {}
        self._pending = ""

    def say(self, line: str) -> None:
        """A line for people: to the terminal and the log."""
        print(line, file=self.terminal, flush=True)
        self.file.write(line + "\n")
        self.file.flush()

    def write(self, text: str) -> int:
        self.file.write(text)
        if self.verbose:
            self.terminal.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for raw in lines:
            line = _ANSI.sub("", raw).rstrip()
            if self.task and (m := _ERROR_LINE.match(line)) and m.group(3):
                self.errors[self.task] = f"{m.group(2)}: {m.group(3)}"
            if not self.verbose and (m := _STAGE_LINE.match(line)):
                self.terminal.write(f"  [{m.group(1)}] {m.group(2)}\n")
        self.terminal.flush()
        return len(text)

    def flush(self) -> None:
        self.file.flush()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        if self._pending:
            self.file.write(self._pending)
        self.file.close()


class StageFailed(Exception):
    """Raised from inside kfp.local when a task fails, so the run stops there (kfp.local would
    go on with the tasks that do not depend on it, e.g. train a student after its teacher
    was refused)."""


class _Progress:
    """Turns kfp.local's task log lines into "stage k of n" lines and records every task:
    status, times and each attempt (a retried training stage has several).

    Installed as the log-record factory, so it sees every record whatever handlers kfp.local
    sets up for nested DAGs (the quality gate's branch has its own). ``on_change`` is called
    after each change (the runner rewrites the run record then, so a killed runner leaves one
    that says which stages had finished). A cache hit is counted as a stage and reported as
    reused, with the run whose outputs it reuses.
    """

    _start = re.compile(r"Executing task '([^']+)'")
    _end = re.compile(r"Task '([^']+)' finished with status (\w+)")
    _retry = re.compile(r"Task (\S+) failed \(attempt (\d+)/(\d+)\)\. Retrying in ([\d.]+)s")
    _hit = re.compile(r"Task (\S+) cache hit \(key=(\w+)\)")

    def __init__(
        self,
        total: int,
        out: _Terminal | None = None,
        *,
        run_dir: Path | None = None,
        cache_root: Path | None = None,
        on_change: Any = None,
    ) -> None:
        self.total, self.k = total, 0
        self.tasks: dict[str, dict[str, Any]] = {}
        self.out = out
        self.run_dir, self.cache_root = run_dir, cache_root
        self.on_change = on_change or (lambda: None)
        self.exit_codes: list[int] = []  # of stage processes, in order (lifecycle.exit_codes)
        self._failed: str | None = None  # failed, and not (yet) retried
        self._factory = logging.getLogRecordFactory()

    def __enter__(self) -> _Progress:
        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = self._factory(*args, **kwargs)
            self.see(record)
            return record

        logging.setLogRecordFactory(factory)
        # kfp.local logs a cache hit at INFO outside its own logging context, where the root
        # logger's default level (WARNING) would drop it before any record is made.
        self._level = logging.getLogger().level
        logging.getLogger().setLevel(min(self._level or logging.INFO, logging.INFO))
        return self

    def __exit__(self, *exc: Any) -> None:
        logging.setLogRecordFactory(self._factory)
        logging.getLogger().setLevel(self._level)

    def _say(self, line: str) -> None:
        if self.out is not None:
            self.out.say(line)
        else:
            print(line, flush=True)

    def _stage(self, name: str, now: dt.datetime) -> None:
        self.k += 1
        self.tasks[name] = {"status": "RUNNING", "start": now, "attempts": []}

    def see(self, record: logging.LogRecord) -> None:
        msg = _ANSI.sub("", record.getMessage())
        now = dt.datetime.now(dt.UTC)
        if m := self._retry.search(msg):
            self._failed = None
            name, attempt, total = m.group(1), int(m.group(2)), int(m.group(3))
            why = self.out.errors.get(name, "") if self.out is not None else ""
            last = (self.tasks.get(name, {}).get("attempts") or [{}])[-1]
            if not why and last.get("exit_code") is not None:
                code = last["exit_code"]
                why = f"exited {code}" + (" (killed)" if code in (137, -9) else "")
            epoch = last_checkpoint_epoch(self.run_dir, name)
            self._say(
                f"=== retry {attempt + 1}/{total} of {name} in {float(m.group(4)):.0f} s"
                + (f" ({why})" if why else "")
                + (
                    f": resuming from epoch {epoch + 1} ==="
                    if epoch
                    else ": no finished epoch to resume from, it starts over ==="
                )
            )
            self.on_change()
            return
        if m := self._hit.search(msg):
            name = m.group(1)
            self._stage(name, now)
            src = cache_source(self.cache_root, m.group(2))
            self.tasks[name].update({"status": runs.REUSED, "end": now, "reused_from": src})
            self._say(
                f"\n=== stage {self.k} of {self.total}: {name}: reused"
                + (f" from run {src}" if src else "")
                + " (cache hit, not run again) ==="
            )
            self.on_change()
            return
        if m := self._start.search(msg):
            name = m.group(1)
            if self._failed is not None and name != self._failed:
                # The failed task was not retried: stop before the next task starts.
                raise StageFailed(self._failed)
            if name not in self.tasks:
                self._stage(name, now)
                self._say(f"\n=== stage {self.k} of {self.total}: {name} ===")
            t = self.tasks[name]
            t["status"] = "RUNNING"  # a retry: the same stage, not a new one
            t["attempts"].append({"start": now, "status": "RUNNING"})
            if self.out is not None:
                self.out.task = name
            self.on_change()
        elif m := self._end.search(msg):
            name, status = m.group(1), m.group(2)
            t = self.tasks.setdefault(name, {"attempts": []})
            t.update({"status": status, "end": now})
            if "start" in t:
                t["duration_s"] = (now - t["start"]).total_seconds()
            if t["attempts"]:
                t["attempts"][-1].update({"status": status, "end": now})
            took = f" in {t['duration_s']:.1f} s" if "duration_s" in t else ""
            word = "done" if status == "SUCCESS" else status
            self._say(f"=== {name}: {word}{took} ===")
            if status == "FAILURE" and name not in runs.RETRIED_TASKS:
                self._failed = name
            self.on_change()

    def exited(self, code: int) -> None:
        """A stage process (container or subprocess) ended with ``code``."""
        running = [t for t in self.tasks.values() if t.get("status") == "RUNNING"]
        if running and running[-1]["attempts"]:
            running[-1]["attempts"][-1]["exit_code"] = int(code)

    def cancel(self) -> str | None:
        """Mark the running stage CANCELLED; returns its name."""
        for name, t in self.tasks.items():
            if t.get("status") == "RUNNING":
                now = dt.datetime.now(dt.UTC)
                t.update({"status": runs.CANCELLED, "end": now})
                if t.get("attempts"):
                    t["attempts"][-1].update({"status": runs.CANCELLED, "end": now})
                return name
        return None

    def finished(self) -> list[str]:
        """The stages that succeeded (run or reused), in order."""
        return [n for n, t in self.tasks.items() if t.get("status") in ("SUCCESS", runs.REUSED)]

    def failed_stage(self) -> str | None:
        """The first task that did not succeed, if any."""
        for name, t in self.tasks.items():
            if t.get("status") not in ("SUCCESS", runs.REUSED, "RUNNING", None):
                return name
        running = [n for n, t in self.tasks.items() if t.get("status") == "RUNNING"]
        return running[-1] if running else None


def last_checkpoint_epoch(run_dir: Path | None, task: str) -> int:
    """The last epoch a task's checkpoint holds (0: none), from its file name."""
    if run_dir is None:
        return 0
    found = [
        int(m.group(1))
        for p in (run_dir / task).glob("*/checkpoint/epoch-*.weights.h5")
        if (m := re.match(r"epoch-(\d+)\.weights\.h5$", p.name))
    ]
    return max(found, default=0)


def cache_source(cache_root: Path | None, key_prefix: str) -> str | None:
    """The run whose outputs a cache hit reuses: read from kfp.local's cache entry (a JSON
    file named after the key, holding the outputs' URIs)."""
    if cache_root is None:
        return None
    for entry in sorted(cache_root.glob(f"{key_prefix}*.json")):
        try:
            text = entry.read_text()
        except OSError:
            continue
        # An output URI's run folder: <pipeline>-YYYY-mm-dd-HH-MM-SS-ffffff (new_run_name).
        if m := re.search(r"/([^/\"]+?-\d{4}(?:-\d{2}){5}-\d{6})/", text):
            return m.group(1)
    return None


def _load_resumable(root: Path, run: str) -> dict[str, Any]:
    """The record of a run ``--resume RUN`` may continue, or a RunnerError saying why not."""
    try:
        described = runs.describe_run(root, run)
    except runs.DataError as exc:
        raise RunnerError(f"--resume {run}: {exc}") from exc
    run_id = described["run_id"]
    path = root / run_id / runs.RUN_RECORD
    record = json.loads(path.read_text()) if path.is_file() else {}
    if "parameters" not in record:
        raise RunnerError(
            f"--resume {run_id}: its record holds no parameters (it was not started by "
            "this version of the runner). Fix: start a new run"
        )
    status = described["status"]
    if status == runs.SUCCEEDED:
        raise RunnerError(
            f"--resume {run_id}: it finished (SUCCEEDED); nothing to resume. Fix: start a new "
            "run (without --resume), or --cache to reuse its stages"
        )
    if status == runs.RUNNING:
        raise RunnerError(
            f"--resume {run_id}: it is still running (runner pid "
            f"{record.get('runner', {}).get('pid')}). Fix: wait, or stop it first (Ctrl-C)"
        )
    record["run_id"] = run_id
    return record


def run(args: argparse.Namespace) -> int:
    """``python -m local_runner run``: check everything, run the pipeline, print the results."""
    import pipeline
    from local_runner import lifecycle

    root = Path(args.pipeline_root).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise RunnerError(f"pipeline root {root} is a file. Fix: pass a folder")
    resume = getattr(args, "resume", None)
    teacher_given = ""
    if resume:
        given = [f for f in RUN_FLAGS if getattr(args, f, None) not in (None, False, [])]
        if given:
            flags = ", ".join("--" + f.replace("_", "-") for f in given)
            raise RunnerError(
                f"--resume continues a run with its own parameters; {flags} would change "
                "them. Fix: drop them, or start a new run"
            )
        prev = _load_resumable(root, resume)
        params, which, run_name = prev["parameters"], prev["pipeline"], prev["run_id"]
        cache_root = Path(prev["cache_root"])
        data_path = check_source(params["source"])
        teacher_given = prev.get("teacher_given", "")
        # What the earlier attempts did stays in the record (each resume adds one entry).
        before_resume = [*prev.get("before_resume", []), prev.get("tasks", {})]
    else:
        before_resume = []
        which = args.pipeline
        overrides = dict(args.param or [])
        if args.train_teacher:
            overrides["teacher_model"] = ""
        for flag, key in (
            ("teacher", "teacher_model"),
            ("data", "source"),
            ("preset", None),
            ("teacher_epochs", "teacher_epochs"),
            ("student_epochs", "student_epochs"),
            ("seed", None),
            ("train_per_class", "train_per_class"),
            ("test_per_class", "test_per_class"),
        ):
            value = getattr(args, flag)
            if value is None:
                continue
            if flag == "preset":
                overrides.update(teacher_preset=value, student_preset=value)
            elif flag == "seed":
                overrides.update(teacher_seed=value, student_seed=value, split_seed=value)
            else:
                overrides[key] = value
        params = resolve_params(args.profile, overrides, which)
        data_path = check_source(params["source"])
        root.mkdir(parents=True, exist_ok=True)
        teacher_given = params.get("teacher_model", "")
        if teacher_given:
            params["teacher_model"] = stage_teacher(teacher_given, root)
        run_name = lifecycle.new_run_name(pipeline.PIPELINE_NAME)
        # Every run caches its finished tasks (that is what --resume reuses); --cache shares
        # one cache between the runs of this root, so identical tasks of earlier runs are reused.
        cache_root = root / ".kfp_cache" / ("shared" if args.cache else run_name)

    from kfp import local

    from local_runner.kfp_compat import enable_artifact_oneof

    enable_artifact_oneof()
    image = args.image
    client = None
    session = os.urandom(6).hex()
    if args.runner == "docker":
        client = check_docker()
        check_reachable_by_container_user(root)
        if os.getuid() == 0:  # the containers' non-root user creates the run folders here
            root.chmod(0o1777)
        ensure_image(image, args.build, client)
        run_args: dict[str, Any] = {
            "network_mode": "none",
            "labels": lifecycle.container_labels(session, root, run_name),
        }
        if os.getuid() != 0:
            run_args["user"] = f"{os.getuid()}:{os.getgid()}"
        if data_path is not None:
            run_args["volumes"] = {str(data_path): {"bind": str(data_path), "mode": "ro"}}
        if args.gpus:
            import docker

            count = -1 if args.gpus == "all" else int(args.gpus)
            run_args["device_requests"] = [
                docker.types.DeviceRequest(count=count, capabilities=[["gpu"]])
            ]
        runner: Any = local.DockerRunner(**run_args)
        os.umask(0o000)  # the container's non-root user writes into folders made here
    else:
        runner = local.SubprocessRunner(use_venv=False)
        try:  # a Docker run killed earlier may have left containers writing into this root
            import docker

            client = docker.from_env()
            client.ping()
        except Exception:
            client = None
    for line in lifecycle.stop_orphans(root, client):
        print(f"[local_runner] {line}", flush=True)
    local.init(
        runner=runner, pipeline_root=str(root), enable_caching=True, cache_root=str(cache_root)
    )

    res = pipeline.Resources(target="kfp", retries=args.retries, backoff="2s")
    fn = pipeline_function(which, res)
    spec = root / ".pipeline.yaml"
    pipeline.compile_pipeline(spec, res=res, image=image, which=which)
    run_dir = root / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    if resume:
        started = dt.datetime.fromisoformat(prev.get("started") or started.isoformat())
    log_path = run_dir / "run.log"
    term = _Terminal(log_path, sys.stdout, verbose=getattr(args, "verbose", False))
    runner_id = {**runs.runner_identity(), "kind": args.runner, "session": session}

    def write_record(status: str, error: str | None = None, done: bool = False) -> None:
        runs.record_run(
            run_dir,
            status,
            pipeline_spec=spec,
            error=error,
            started=started,
            finished=dt.datetime.now(dt.UTC) if done else None,
            tasks=progress.tasks,
            runner=runner_id,
            parameters=params,
            pipeline=which,
            cache_root=str(cache_root),
            teacher_given=teacher_given,
            before_resume=before_resume,
        )

    progress = _Progress(
        len(stage_names(params, which)),
        term,
        run_dir=run_dir,
        cache_root=cache_root,
        on_change=lambda: write_record(runs.RUNNING),
    )
    write_record(runs.RUNNING)
    word = "resuming" if resume else "running"
    print(
        f"[local_runner] {word} {pipeline.PIPELINE_NAME} with the {args.runner} runner; "
        f"run {run_name} in {root}",
        flush=True,
    )
    if teacher_given:
        print(
            f"[local_runner] teacher: {teacher_given} (not trained in this run; checked, then "
            f"distilled from: {params['teacher_model']})",
            flush=True,
        )
    t0 = time.perf_counter()
    error = None
    cancelled: str | None = None  # the signal that stopped the run
    saved = sys.stdout, sys.stderr
    try:
        sys.stdout = sys.stderr = term  # type: ignore[assignment]
        with (
            lifecycle.cancel_on_signals(),
            lifecycle.fixed_run_name(run_name),
            lifecycle.exit_codes(progress.exited),
            progress,
        ):
            fn(**params)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (lifecycle.cancel_on_signals)
        cancelled = lifecycle.signal_name(exc)
    except Exception as exc:  # kfp.local raises RuntimeError when a task fails
        stage = progress.failed_stage()
        reason = term.errors.get(stage or "") or _ANSI.sub("", f"{type(exc).__name__}: {exc}")
        error = f"stage {stage} failed: {reason}" if stage else reason
        if teacher_given and params["teacher_model"]:
            error = error.replace(params["teacher_model"], teacher_given)
    finally:
        sys.stdout, sys.stderr = saved
        term.close()
    wall = time.perf_counter() - t0
    inspect_hint = f"python -m local_runner inspect {run_name} --pipeline-root {root}"
    if cancelled is not None:
        with lifecycle.ignore_signals():  # a second Ctrl-C must not stop the cleanup
            stopped = lifecycle.stop_own_work(session, root, client)
            stage = progress.cancel()
            done = progress.finished()
            why = f"cancelled by {cancelled}" + (f" during {stage}" if stage else "")
            write_record(runs.CANCELLED, error=why, done=True)
        print(
            f"[local_runner] {why} after {wall:.0f} s; {len(done)} of {progress.total} stages "
            f"had finished ({', '.join(done) or 'none'})"
            + (f"; stopped {', '.join(stopped)}" if stopped else "")
            + f". Resume: python -m local_runner run --resume {run_name} --pipeline-root "
            f"{root}; log: {log_path}",
            file=sys.stderr,
            flush=True,
        )
        return 130
    write_record(runs.FAILED if error else runs.SUCCEEDED, error=error, done=True)
    try:  # reports open in a browser as pages (KFP names their files without .html)
        runs.add_browser_copies(runs.describe_run(root, run_name, pipeline_spec=spec))
    except (OSError, runs.DataError) as exc:
        print(f"[local_runner] warning: no .html copies of the reports: {exc}", flush=True)
    if error:
        raise RunnerError(
            f"the pipeline failed after {wall:.0f} s: {error}\n  log: {log_path}\n  inspect: "
            f"{inspect_hint}\n  resume (after fixing the cause): python -m local_runner run "
            f"--resume {run_name} --pipeline-root {root}"
        )
    print_result(root, run_dir, wall, progress.tasks)
    print(f"log:    {log_path}")
    return 0


def print_result(
    root: Path, run_dir: Path, wall: float, tasks: dict[str, dict[str, Any]] | None = None
) -> None:
    """The comparison table and where the report is (in the run a reused task came from)."""
    print(f"\n[local_runner] pipeline finished in {wall:.0f} s")

    def task_dir(task: str) -> Path:
        src = ((tasks or {}).get(task) or {}).get("reused_from")
        return root / src / task if src else run_dir / task

    summary = task_dir(runs.EVALUATE) / "summary"
    # The HTML artifact's file has no extension (KFP's UI renders it); the same page, named
    # report.html, is in the report_files artifact, so a browser opens it as a page.
    report = task_dir(runs.EVALUATE) / "report_files" / "report.html"
    if not summary.exists():  # the sweep
        summary = task_dir(runs.SELECT_BEST_STUDENT) / "summary"
        report = runs.browser_copy(task_dir(runs.SELECT_BEST_STUDENT) / "heatmap")
    if summary.exists():
        print(summary.read_text())
    print(f"run:    {run_dir.name}")
    if report.exists():
        print(f"report: {report} (HTML; open it in a browser)")
    print(f"inspect: python -m local_runner inspect {run_dir.name} --pipeline-root {root}")
