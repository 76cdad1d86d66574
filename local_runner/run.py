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
import time
from pathlib import Path
from typing import Any

from kd.config import (
    DistillConfig,
    EvalConfig,
    GateConfig,
    SplitConfig,
    StudentConfig,
    TeacherConfig,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PIPELINE_ROOT = "runs"

# The offline demo: the shipped real sample (2,500 train / 500 test images), epochs sized to
# finish in a few minutes on 2 CPU cores. Every other value is the pipeline's default.
PROFILES: dict[str, dict[str, Any]] = {
    "demo": {
        "source": "sample",
        "teacher_epochs": 10,
        "teacher_batch_size": 32,
        "teacher_learning_rate": 0.02,
        "teacher_augment": False,
        "teacher_warmup_epochs": 1,
        "student_epochs": 15,
        "student_batch_size": 32,
        "teacher_divergence_check_epoch": 0,
        "student_divergence_check_epoch": 0,
        "latency_runs": 20,
        "grid": [{"temperature": t, "alpha": a} for t in (2.0, 5.0) for a in (0.1, 0.5)],
    },
    "full": {},
}
STAGES = (
    "data-split",
    "train-teacher",
    "train-student-scratch",
    "distill-student",
    "evaluate",
    "export-model",
)


class RunnerError(Exception):
    """A problem found before (or while) running; one line, with the fix."""


def parse_value(text: str) -> Any:
    """``KEY=VALUE`` values: JSON when it parses (numbers, true/false), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def pipeline_function(which: str = "main", res: Any = None) -> Any:
    """The ``main`` or ``sweep`` pipeline function of pipeline.py."""
    import pipeline

    return pipeline.make_sweep_pipeline(res) if which == "sweep" else pipeline.make_pipeline(res)


def pipeline_parameters(which: str = "main") -> dict[str, Any]:
    """The pipeline's parameters and their defaults (from its signature)."""
    import inspect

    sig = inspect.signature(pipeline_function(which).pipeline_func)
    return {name: p.default for name, p in sig.parameters.items()}


def resolve_params(profile: str, overrides: dict[str, Any], which: str = "main") -> dict[str, Any]:
    """Profile values, then explicit overrides; unknown names and bad values fail here."""
    known = pipeline_parameters(which)
    params = dict(known)
    params.update({k: v for k, v in PROFILES[profile].items() if k in known})
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise RunnerError(
            f"unknown pipeline parameter(s) {unknown}. Fix: use one of {', '.join(sorted(known))}"
        )
    for key, value in overrides.items():
        params[key] = _coerce(key, value, known[key])
    validate_params(params)
    return params


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Give ``value`` the type of the parameter's default (``1`` for a float is ``1.0``)."""
    kind = type(default)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    raise RunnerError(
        f"parameter {key}={value!r} must be a {kind.__name__} (default "
        f"{default!r}). Fix: pass e.g. --param {key}={default!r}"
    )


def _stage_config(cls: type, prefix: str, params: dict[str, Any], **extra: Any) -> Any:
    fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
    values = {k: params[f"{prefix}{k}"] for k in fields if f"{prefix}{k}" in params}
    values.update(extra)
    return cls(**values)


def _training_configs(params: dict[str, Any]) -> dict[str, Any]:
    """The data split's and the two supervised trainings' configs (both pipelines have them)."""
    return {
        "split": SplitConfig(
            source=params["source"],
            val_fraction=params["val_fraction"],
            seed=params["split_seed"],
            train_per_class=params["train_per_class"],
            test_per_class=params["test_per_class"],
        ),
        "teacher": _stage_config(TeacherConfig, "teacher_", params),
        "student": _stage_config(StudentConfig, "student_", params),
    }


def stage_configs(params: dict[str, Any]) -> dict[str, Any]:
    """The config of every stage of the main pipeline, built from its parameters as the
    components build them: ``split``, ``teacher``, ``student``, ``distill``, ``evaluate``,
    ``gate``, and ``export_check_images``."""
    return {
        **_training_configs(params),
        "distill": _stage_config(
            DistillConfig,
            "student_",
            params,
            temperature=params["temperature"],
            alpha=params["alpha"],
            teacher_views=params["teacher_views"],
        ),
        "evaluate": EvalConfig(
            batch_size=params["eval_batch_size"], latency_runs=params["latency_runs"]
        ),
        "gate": GateConfig(min_kd_gain=params["min_kd_gain"], min_accuracy=params["min_accuracy"]),
        "export_check_images": params["export_check_images"],
    }


def validate_params(params: dict[str, Any]) -> None:
    """Build every stage's config from the parameters: the same checks the stages make."""
    if "grid" not in params:
        stage_configs(params)
        return
    # The sweep: its distillations take their temperature and alpha from the grid.
    _training_configs(params)
    grid = params["grid"]
    if not isinstance(grid, list) or not grid:
        raise RunnerError(
            "parameter grid must be a non-empty JSON list of "
            '{"temperature": T, "alpha": a}. Fix: e.g. --param '
            'grid=\'[{"temperature": 4, "alpha": 0.1}]\''
        )
    for point in grid:
        if not isinstance(point, dict) or set(point) != {"temperature", "alpha"}:
            raise RunnerError(
                f"grid point {point!r} must have exactly the keys "
                "temperature and alpha. Fix: e.g. "
                '{"temperature": 4, "alpha": 0.1}'
            )
        _stage_config(
            DistillConfig, "student_", params, **point, teacher_views=params["teacher_views"]
        )


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


def ensure_image(image: str, build: str, client: Any) -> None:
    """Build the image with docker/build.sh unless ``build`` is ``never`` (then it must exist).

    build.sh skips the build when the image's recorded input hash is unchanged.
    """
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
            f"building image {image} failed (see above). Fix: without a registry "
            "use --build offline; with one, check network access to PyPI"
        )


class _Progress:
    """Turns kfp.local's task log lines into "stage k of n" lines and records task times.

    Installed as the log-record factory, so it sees every record whatever handlers kfp.local
    sets up for nested DAGs (the quality gate's branch has its own).
    """

    _start = re.compile(r"Executing task '([^']+)'")
    _end = re.compile(r"Task '([^']+)' finished with status (\w+)")

    def __init__(self, total: int) -> None:
        self.total, self.k = total, 0
        self.tasks: dict[str, dict[str, Any]] = {}
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

    def see(self, record: logging.LogRecord) -> None:
        msg = re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage())
        now = dt.datetime.now(dt.UTC)
        if m := self._start.search(msg):
            self.k += 1
            self.tasks[m.group(1)] = {"status": "RUNNING", "start": now}
            print(f"\n=== stage {self.k} of {self.total}: {m.group(1)} ===", flush=True)
        elif m := self._end.search(msg):
            t = self.tasks.setdefault(m.group(1), {})
            t.update({"status": m.group(2), "end": now})
            if "start" in t:
                t["duration_s"] = (now - t["start"]).total_seconds()


def run(args: argparse.Namespace) -> int:
    """``python -m local_runner run``: check everything, run the pipeline, print the results."""
    import pipeline

    overrides = dict(args.param or [])
    for flag, key in (
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

    from kfp import local

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
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # as the image sets it
        runner = local.SubprocessRunner(use_venv=False)
    local.init(runner=runner, pipeline_root=str(root), enable_caching=args.cache)

    res = pipeline.Resources(target="kfp", retries=args.retries, backoff="2s")
    fn = pipeline_function(args.pipeline, res)
    spec = root / ".pipeline.yaml"
    pipeline.compile_pipeline(spec, res=res, image=image, which=args.pipeline)
    before = {p.name for p in root.iterdir() if p.is_dir()}
    progress = _Progress(len(STAGES) if args.pipeline == "main" else 3 + len(params["grid"]))
    started = dt.datetime.now(dt.UTC)
    print(
        f"[local_runner] running {pipeline.PIPELINE_NAME} with the {args.runner} runner; "
        f"pipeline root {root}",
        flush=True,
    )
    t0 = time.perf_counter()
    error = None
    try:
        with progress:
            fn(**params)
    except Exception as exc:  # kfp.local raises RuntimeError when a task fails
        error = f"{type(exc).__name__}: {exc}"
    wall = time.perf_counter() - t0
    new = sorted({p.name for p in root.iterdir() if p.is_dir()} - before)
    run_dir = root / new[-1] if new else None
    if run_dir is not None:
        from local_runner.inspect import record_run

        record_run(
            run_dir,
            "FAILED" if error else "SUCCEEDED",
            pipeline_spec=spec,
            error=error,
            started=started,
            finished=dt.datetime.now(dt.UTC),
            tasks=progress.tasks,
        )
    if error:
        raise RunnerError(
            f"the pipeline failed after {wall:.0f} s: {error}. Inspect it with "
            f"python -m local_runner inspect {run_dir.name if run_dir else ''} "
            f"--root {root}"
        )
    print_result(root, run_dir, wall)
    return 0


def print_result(root: Path, run_dir: Path | None, wall: float) -> None:
    """The comparison table and where the report is."""
    print(f"\n[local_runner] pipeline finished in {wall:.0f} s")
    if run_dir is None:
        return
    summary = run_dir / "evaluate" / "summary"
    # The HTML artifact's file has no extension (KFP's UI renders it); the same page, named
    # report.html, is in the report_files artifact, so a browser opens it as a page.
    report = run_dir / "evaluate" / "report_files" / "report.html"
    if not summary.exists():  # the sweep
        summary = run_dir / "select-best-student" / "summary"
        report = run_dir / "select-best-student" / "heatmap"
    if summary.exists():
        print(summary.read_text())
    print(f"run:    {run_dir.name}")
    print(f"report: {report} (HTML; open it in a browser)")
    print(f"inspect: python -m local_runner inspect {run_dir.name} --root {root}")
