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

# The offline demo: the shipped real sample (2,500 train / 500 test images) and the teacher
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
        "student_epochs": 15,
        "student_batch_size": 32,
        # The teacher's logits for 4 augmented views of each training image, computed once
        # (bench/results/demo-kd-cpu.json; chosen by validation accuracy within the demo's
        # time budget, docs/RESULTS.md section 8).
        "teacher_views": 4,
        "teacher_divergence_check_epoch": 0,
        "student_divergence_check_epoch": 0,
        "latency_runs": 20,
        "grid": [{"temperature": t, "alpha": a} for t in (2.0, 5.0) for a in (0.1, 0.5)],
    },
    "full": {},
}
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


def ensure_image(image: str, build: str, client: Any) -> None:
    """Build the image with docker/build.sh unless ``build`` is ``never`` (then it must exist).

    build.sh skips the build when the image's recorded input hash is unchanged. ``auto`` builds
    the way this machine built before: offline where the offline base image exists (after
    ``make demo``), else from the public base image.
    """
    if build == "auto":
        try:
            client.images.get(OFFLINE_BASE)
            build = "offline"
        except Exception:
            build = "online"
    if build == "never":
        try:
            client.images.get(image)
        except Exception as exc:
            raise RunnerError(
                f"image {image} not found and --build never. Fix: build it "
                "with docker/build.sh (--offline without a registry)"
            ) from exc
        return
    cmd = ["bash", str(ROOT / "docker" / "build.sh"), "--tag", image]
    if build == "offline":
        cmd.insert(2, "--offline")
    print(f"[local_runner] image {image}: {' '.join(cmd[1:])}", flush=True)
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        raise RunnerError(
            f"building image {image} failed (see above). Fix: without a container registry "
            "use --build offline (make image-offline); with one, check that it and PyPI are "
            "reachable"
        )


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
    """Turns kfp.local's task log lines into "stage k of n" lines and records task times.

    Installed as the log-record factory, so it sees every record whatever handlers kfp.local
    sets up for nested DAGs (the quality gate's branch has its own).
    """

    _start = re.compile(r"Executing task '([^']+)'")
    _end = re.compile(r"Task '([^']+)' finished with status (\w+)")
    _retry = re.compile(r"Task (\S+) failed \(attempt (\d+)/(\d+)\)\. Retrying in ([\d.]+)s")

    def __init__(self, total: int, out: _Terminal | None = None) -> None:
        self.total, self.k = total, 0
        self.tasks: dict[str, dict[str, Any]] = {}
        self.out = out
        self._failed: str | None = None  # failed, and not (yet) retried
        self._factory = logging.getLogRecordFactory()

    def __enter__(self) -> _Progress:
        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = self._factory(*args, **kwargs)
            self.see(record)
            return record

        logging.setLogRecordFactory(factory)
        return self

    def __exit__(self, *exc: Any) -> None:
        logging.setLogRecordFactory(self._factory)

    def _say(self, line: str) -> None:
        if self.out is not None:
            self.out.say(line)
        else:
            print(line, flush=True)

    def see(self, record: logging.LogRecord) -> None:
        msg = _ANSI.sub("", record.getMessage())
        now = dt.datetime.now(dt.UTC)
        if m := self._retry.search(msg):
            self._failed = None
            name, attempt, total = m.group(1), int(m.group(2)), int(m.group(3))
            reason = self.out.errors.get(name, "") if self.out is not None else ""
            self._say(
                f"=== retry {attempt + 1}/{total} of {name} in {float(m.group(4)):.0f} s"
                + (f" ({reason})" if reason else "")
                + ": it resumes from its last checkpoint ==="
            )
            return
        if m := self._start.search(msg):
            if self._failed is not None and m.group(1) != self._failed:
                # The failed task was not retried: stop before the next task starts.
                raise StageFailed(self._failed)
            if m.group(1) in self.tasks:  # a retry: the same stage, not a new one
                self.tasks[m.group(1)].update({"status": "RUNNING"})
                if self.out is not None:
                    self.out.task = m.group(1)
                return
            self.k += 1
            self.tasks[m.group(1)] = {"status": "RUNNING", "start": now}
            if self.out is not None:
                self.out.task = m.group(1)
            self._say(f"\n=== stage {self.k} of {self.total}: {m.group(1)} ===")
        elif m := self._end.search(msg):
            t = self.tasks.setdefault(m.group(1), {})
            t.update({"status": m.group(2), "end": now})
            if "start" in t:
                t["duration_s"] = (now - t["start"]).total_seconds()
            took = f" in {t['duration_s']:.1f} s" if "duration_s" in t else ""
            word = "done" if m.group(2) == "SUCCESS" else m.group(2)
            self._say(f"=== {m.group(1)}: {word}{took} ===")
            if m.group(2) == "FAILURE" and m.group(1) not in runs.RETRIED_TASKS:
                self._failed = m.group(1)

    def failed_stage(self) -> str | None:
        """The first task that did not succeed, if any."""
        for name, t in self.tasks.items():
            if t.get("status") not in ("SUCCESS", "RUNNING", None):
                return name
        running = [n for n, t in self.tasks.items() if t.get("status") == "RUNNING"]
        return running[-1] if running else None


def run(args: argparse.Namespace) -> int:
    """``python -m local_runner run``: check everything, run the pipeline, print the results."""
    import pipeline

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
    params = resolve_params(args.profile, overrides, args.pipeline)
    data_path = check_source(params["source"])
    root = Path(args.pipeline_root).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise RunnerError(f"pipeline root {root} is a file. Fix: pass a folder")
    root.mkdir(parents=True, exist_ok=True)
    teacher_given = params.get("teacher_model", "")
    if teacher_given:
        params["teacher_model"] = stage_teacher(teacher_given, root)

    from kfp import local

    from local_runner.kfp_compat import enable_artifact_oneof

    enable_artifact_oneof()
    image = args.image
    if args.runner == "docker":
        client = check_docker()
        check_reachable_by_container_user(root)
        if os.getuid() == 0:  # the containers' non-root user creates the run folders here
            root.chmod(0o1777)
        ensure_image(image, args.build, client)
        run_args: dict[str, Any] = {"network_mode": "none"}
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
    local.init(runner=runner, pipeline_root=str(root), enable_caching=args.cache)

    res = pipeline.Resources(target="kfp", retries=args.retries, backoff="2s")
    fn = pipeline_function(args.pipeline, res)
    spec = root / ".pipeline.yaml"
    pipeline.compile_pipeline(spec, res=res, image=image, which=args.pipeline)
    before = {p.name for p in root.iterdir() if p.is_dir()}
    started = dt.datetime.now(dt.UTC)
    log_path = root / f".run-{started.strftime('%Y%m%d-%H%M%S-%f')}.log"
    term = _Terminal(log_path, sys.stdout, verbose=getattr(args, "verbose", False))
    progress = _Progress(len(stage_names(params, args.pipeline)), term)
    print(
        f"[local_runner] running {pipeline.PIPELINE_NAME} with the {args.runner} runner; "
        f"pipeline root {root}",
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
    saved = sys.stdout, sys.stderr
    try:
        sys.stdout = sys.stderr = term  # type: ignore[assignment]
        with progress:
            fn(**params)
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
    new = sorted({p.name for p in root.iterdir() if p.is_dir()} - before)
    run_dir = root / new[-1] if new else None
    if run_dir is not None:
        log_path = log_path.replace(run_dir / "run.log")
    else:
        log_path = log_path.replace(root / "last-run.log")
    if run_dir is not None:
        runs.record_run(
            run_dir,
            "FAILED" if error else "SUCCEEDED",
            pipeline_spec=spec,
            error=error,
            started=started,
            finished=dt.datetime.now(dt.UTC),
            tasks=progress.tasks,
        )
    if run_dir is not None:
        try:  # reports open in a browser as pages (KFP names their files without .html)
            runs.add_browser_copies(runs.describe_run(root, run_dir.name, pipeline_spec=spec))
        except (OSError, runs.DataError) as exc:
            print(f"[local_runner] warning: no .html copies of the reports: {exc}", flush=True)
    if error:
        raise RunnerError(
            f"the pipeline failed after {wall:.0f} s: {error}\n  log: {log_path}\n  inspect: "
            f"python -m local_runner inspect {run_dir.name if run_dir else ''} "
            f"--pipeline-root {root}"
        )
    print_result(root, run_dir, wall)
    print(f"log:    {log_path}")
    return 0


def print_result(root: Path, run_dir: Path | None, wall: float) -> None:
    """The comparison table and where the report is."""
    print(f"\n[local_runner] pipeline finished in {wall:.0f} s")
    if run_dir is None:
        return
    summary = run_dir / runs.EVALUATE / "summary"
    # The HTML artifact's file has no extension (KFP's UI renders it); the same page, named
    # report.html, is in the report_files artifact, so a browser opens it as a page.
    report = run_dir / runs.EVALUATE / "report_files" / "report.html"
    if not summary.exists():  # the sweep
        summary = run_dir / runs.SELECT_BEST_STUDENT / "summary"
        report = runs.browser_copy(run_dir / runs.SELECT_BEST_STUDENT / "heatmap")
    if summary.exists():
        print(summary.read_text())
    print(f"run:    {run_dir.name}")
    print(f"report: {report} (HTML; open it in a browser)")
    print(f"inspect: python -m local_runner inspect {run_dir.name} --pipeline-root {root}")
