"""List and describe pipeline runs from what they left in a pipeline root.

Reads a **local** pipeline root written by ``kfp.local`` (SubprocessRunner or DockerRunner) and a
``gs://`` pipeline root written by Kubeflow Pipelines or Vertex AI. Nothing here talks to a KFP
or Vertex AI API: everything comes from the files, so it works offline and after the fact.

Layouts
-------
Local (``kfp.local``, kfp 2.17; checked by running a pipeline)::

    <root>/<pipeline-name>-<YYYY-mm-dd-HH-MM-SS-ffffff>/   one run; the timestamp is the local
                                                           time the run started
        <task>/                                            component name without "comp-"
            <output-name>                                  the artifact (a file or a folder);
                                                           Metrics/ClassificationMetrics write
                                                           no file at all
            executor_output.json                           written by the KFP executor when the
                                                           task SUCCEEDS: artifact name, uri,
                                                           metadata (Metrics values live only
                                                           here) and parameter outputs
        kd_run.json                                        optional, see :func:`record_run`

``kfp.local`` keeps no status, timestamps or artifact types on disk (it only logs them), so:

- a task folder with ``executor_output.json`` SUCCEEDED; one without it is INCOMPLETE (it failed,
  or it is still running); a task that failed before writing any output leaves no folder;
- the run's start is the timestamp in its folder name; a task ends when its
  ``executor_output.json`` was written (mtime); ``kfp.local`` runs tasks one at a time, so a task
  starts when the previous one ended (durations include process start-up);
- artifact types (``system.Model`` ...) come from, in order: a ``type`` in
  ``executor_output.json`` (other backends), the compiled pipeline spec (``pipeline_spec=``, or
  recorded by :func:`record_run`), else a guess from metadata, content and name
  (``type_source`` says which).

``gs://`` (KFP / Vertex AI)::

    gs://BUCKET/ROOT/<project-number | pipeline-name>/<run-id>/<task-name>_<id>/<output-name>
                                                                          .../executor_output.json

A run is the parent of folders that hold an ``executor_output.json``. Times come from object
creation times (tasks may run in parallel there: a task "starts" when its first object was
written); the authoritative status of a Vertex AI job is in Vertex AI, not in the bucket.

Use :func:`list_runs` / :func:`describe_run` (JSON-friendly dicts) and :func:`format_runs` /
:func:`format_run` (text); ``python -m local_runner inspect`` is the command line over them.
The pipeline's task names, which a run's folders are named after, are defined here once
(:data:`TASKS`); the pipeline's compile test checks them against the compiled spec.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kd.errors import DataError
from kd.storage import gcs_client, is_gcs, split_gcs, write_text_atomic

# The pipeline's tasks, as KFP names them after the component functions (``train_teacher`` ->
# ``train-teacher``); ``importer`` is the dsl.importer that brings a teacher of the user's in.
DATA_SPLIT = "data-split"
TRAIN_TEACHER = "train-teacher"
IMPORTER = "importer"
CHECK_TEACHER = "check-teacher"
TRAIN_STUDENT_SCRATCH = "train-student-scratch"
DISTILL_STUDENT = "distill-student"
EVALUATE = "evaluate"
EXPORT_MODEL = "export-model"
REGISTER_MODEL = "register-model"
SELECT_BEST_STUDENT = "select-best-student"
TASKS = (
    DATA_SPLIT,
    TRAIN_TEACHER,
    IMPORTER,
    CHECK_TEACHER,
    TRAIN_STUDENT_SCRATCH,
    DISTILL_STUDENT,
    EVALUATE,
    EXPORT_MODEL,
    REGISTER_MODEL,
    SELECT_BEST_STUDENT,
)
#: The training tasks, compiled with a retry policy (``pipeline._heavy``): a failed attempt
#: resumes from its last epoch, so a local run does not stop at their first failure.
RETRIED_TASKS = (TRAIN_TEACHER, TRAIN_STUDENT_SCRATCH, DISTILL_STUDENT)

EXECUTOR_OUTPUT = "executor_output.json"
RUN_RECORD = "kd_run.json"

SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
INCOMPLETE = "INCOMPLETE"
NOT_RUN = "NOT_RUN"
UNKNOWN = "UNKNOWN"
#: Written by the local runner: RUNNING while it runs, CANCELLED when stopped by Ctrl-C or
#: SIGTERM; a RUNNING record whose runner process is gone reads as INTERRUPTED (kill -9).
RUNNING = "RUNNING"
CANCELLED = "CANCELLED"
INTERRUPTED = "INTERRUPTED"
#: A task the local runner did not run because kfp.local's cache held its outputs.
REUSED = "REUSED"

METRICS = "system.Metrics"
CLASSIFICATION_METRICS = "system.ClassificationMetrics"
HTML = "system.HTML"
MARKDOWN = "system.Markdown"
MODEL = "system.Model"
DATASET = "system.Dataset"
ARTIFACT = "system.Artifact"

# <pipeline-name>-2026-01-31-13-45-07-123456 (kfp.local get_local_pipeline_resource_name)
_LOCAL_RUN_RE = re.compile(r"^(?P<name>.+)-(?P<ts>\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-\d{6})$")
# Vertex AI's default job id: <pipeline-name>-YYYYmmddHHMMSS
_VERTEX_RUN_RE = re.compile(r"^(?P<name>.+)-(?P<ts>\d{14})$")
# Vertex AI task folders: <task-name>_<task id>
_TASK_ID_RE = re.compile(r"^(?P<name>.+)_(?P<id>\d+)$")

LAYOUT_HELP = (
    "A pipeline root holds one folder per run. Local (kfp.local): "
    "ROOT/<pipeline-name>-YYYY-mm-dd-HH-MM-SS-ffffff/<task>/executor_output.json. "
    "KFP / Vertex AI: gs://BUCKET/ROOT/<project-number or pipeline-name>/<run-id>/"
    "<task>_<id>/executor_output.json. Pass the folder that was given as pipeline_root "
    "(kfp.local.init(pipeline_root=...), or the job's pipeline root)."
)


class NotAPipelineRootError(DataError):
    """The path holds no pipeline runs."""


class RunNotFoundError(DataError, LookupError):
    """The pipeline root has no run of that id; ``known`` lists the ids it has."""

    def __init__(self, message: str, known: list[str]):
        super().__init__(message)
        self.known = known


# --------------------------------------------------------------------------------------------
# Storage backends: a flat view of the files under one run.


@dataclass
class _File:
    rel: str  # path relative to the run folder, "/"-separated
    size: int
    mtime: dt.datetime  # timezone-aware


@dataclass
class _Run:
    run_id: str
    uri: str  # local folder or gs:// URI of the run
    group: str  # gs:// only: the level between root and run (project number or pipeline name)
    pipeline_name: str | None
    created: dt.datetime | None
    files: list[_File] = field(default_factory=list)


def _aware(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts).astimezone()


class _LocalRoot:
    def __init__(self, root: str):
        self.root = Path(root).expanduser()
        self.display = str(root)

    def check(self) -> None:
        if not self.root.exists():
            raise NotAPipelineRootError(
                f"pipeline root {self.display} does not exist. {LAYOUT_HELP}"
            )
        if not self.root.is_dir():
            raise NotAPipelineRootError(
                f"pipeline root {self.display} is not a folder. {LAYOUT_HELP}"
            )

    def runs(self) -> list[_Run]:
        self.check()
        runs = []
        created: dt.datetime | None
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            m = _LOCAL_RUN_RE.match(entry.name)
            if m:
                created = dt.datetime.strptime(m["ts"], "%Y-%m-%d-%H-%M-%S-%f").astimezone()
                runs.append(_Run(entry.name, entry.path, "", m["name"], created))
            elif _has_task_with_output(Path(entry.path)):
                # a run folder under another name: its earliest file is the best start we have
                files = self._walk(Path(entry.path))
                created = min((f.mtime for f in files), default=None)
                runs.append(_Run(entry.name, entry.path, "", None, created))
        return runs

    def load(self, run: _Run) -> _Run:
        run.files = self._walk(Path(run.uri))
        return run

    @staticmethod
    def _walk(top: Path) -> list[_File]:
        files = []
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(filenames):
                p = Path(dirpath) / name
                try:
                    st = p.stat()
                except OSError:
                    continue
                files.append(_File(p.relative_to(top).as_posix(), st.st_size, _aware(st.st_mtime)))
        return files

    def read_text(self, run: _Run, rel: str) -> str | None:
        try:
            return (Path(run.uri) / rel).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    def resolve(self, run: _Run, task_dir: str, name: str, uri: str) -> tuple[str, str | None]:
        """(uri, rel path inside the run or None when the artifact lies elsewhere)."""
        run_dir = Path(run.uri)
        own = run_dir / task_dir / name
        p = Path(uri) if uri else None
        if p is not None and p.exists():
            try:
                return uri, p.resolve().relative_to(run_dir.resolve()).as_posix()
            except ValueError:
                pass  # recorded outside this run folder
        # A copied or moved root: the recorded absolute uri is stale (or points at the
        # original); the layout inside the run folder is not.
        if own.exists() or p is None or not p.exists():
            return str(own), f"{task_dir}/{name}"
        return uri, None

    def head(self, uri: str, n: int = 512) -> bytes:
        try:
            with open(uri, "rb") as f:
                return f.read(n)
        except OSError:
            return b""

    def size(self, uri: str) -> tuple[bool, int, int]:
        p = Path(uri)
        if p.is_file():
            return True, p.stat().st_size, 1
        if p.is_dir():
            total = count = 0
            for dirpath, _, filenames in os.walk(p):
                for name in filenames:
                    try:
                        total += (Path(dirpath) / name).stat().st_size
                        count += 1
                    except OSError:
                        pass
            return True, total, count
        return False, 0, 0


def _has_task_with_output(folder: Path) -> bool:
    try:
        return any(
            e.is_dir() and (Path(e.path) / EXECUTOR_OUTPUT).is_file() for e in os.scandir(folder)
        )
    except OSError:
        return False


class _GcsRoot:
    def __init__(self, root: str):
        self.display = root.rstrip("/")
        self.bucket, self.prefix = split_gcs(root)
        self._blobs: list[tuple[str, int, dt.datetime]] | None = None
        self._client: Any = None

    def _list(self) -> list[tuple[str, int, dt.datetime]]:
        if self._blobs is None:
            self._client = gcs_client()
            prefix = self.prefix + "/" if self.prefix else ""
            try:
                blobs = list(self._client.list_blobs(self.bucket, prefix=prefix))
            except Exception as exc:  # NotFound, Forbidden, transport errors
                raise NotAPipelineRootError(
                    f"cannot list {self.display}: {exc}. Fix: check the bucket name and that "
                    "your credentials can read it (gsutil ls " + self.display + ")"
                ) from exc
            epoch = dt.datetime.fromtimestamp(0, dt.UTC)
            self._blobs = [
                (b.name[len(prefix) :], int(b.size or 0), b.time_created or b.updated or epoch)
                for b in blobs
                if not b.name.endswith("/")
            ]
        return self._blobs

    def check(self) -> None:
        self._list()

    def runs(self) -> list[_Run]:
        by_run: dict[str, list[_File]] = {}
        run_keys: set[str] = set()
        blobs = self._list()
        for rel, _, _ in blobs:
            parts = rel.split("/")
            if len(parts) >= 3 and parts[-1] == EXECUTOR_OUTPUT:
                run_keys.add("/".join(parts[:-2]))
            # runs written with kfp.local's naming, even when no task finished
            for i, part in enumerate(parts[:-2]):
                if _LOCAL_RUN_RE.match(part):
                    run_keys.add("/".join(parts[: i + 1]))
                    break
        # A key that is itself inside another run's folder is a nested folder, not a run.
        keys = sorted(run_keys)
        keys = [k for k in keys if not any(k.startswith(o + "/") for o in keys if o != k)]
        for rel, size, when in blobs:
            for k in keys:
                if rel.startswith(k + "/"):
                    by_run.setdefault(k, []).append(_File(rel[len(k) + 1 :], size, when))
                    break
        runs = []
        for key in keys:
            parts = key.split("/")
            run_id = parts[-1]
            group = "/".join(parts[:-1])
            files = by_run.get(key, [])
            name = None
            m = _LOCAL_RUN_RE.match(run_id) or _VERTEX_RUN_RE.match(run_id)
            if m:
                name = m["name"]
            elif group and not group.split("/")[-1].isdigit():
                name = group.split("/")[-1]  # KFP: ROOT/<pipeline-name>/<run-id>/
            first: dt.datetime | None = min((f.mtime for f in files), default=None)
            uri = f"gs://{self.bucket}/{self.prefix + '/' if self.prefix else ''}{key}"
            runs.append(_Run(run_id, uri, group, name, first, files))
        return runs

    def load(self, run: _Run) -> _Run:
        return run  # the listing already holds every file

    def read_text(self, run: _Run, rel: str) -> str | None:
        bucket, path = split_gcs(run.uri + "/" + rel)
        try:
            return self._client.bucket(bucket).blob(path).download_as_bytes().decode("utf-8")
        except Exception:
            return None

    def resolve(self, run: _Run, task_dir: str, name: str, uri: str) -> tuple[str, str | None]:
        if uri.startswith("/gcs/"):  # the FUSE path Vertex AI components write through
            uri = "gs://" + uri[len("/gcs/") :]
        if not uri:
            uri = f"{run.uri}/{task_dir}/{name}"
        if uri.startswith(run.uri + "/"):
            return uri, uri[len(run.uri) + 1 :]
        return uri, None

    def head(self, uri: str, n: int = 512) -> bytes:
        if not is_gcs(uri):
            return b""
        bucket, path = split_gcs(uri)
        try:
            return self._client.bucket(bucket).blob(path).download_as_bytes(start=0, end=n - 1)
        except Exception:
            return b""

    def size(self, uri: str) -> tuple[bool, int, int]:
        if not is_gcs(uri):
            return False, 0, 0
        bucket, path = split_gcs(uri)
        try:
            blobs = [
                b
                for b in self._client.list_blobs(bucket, prefix=path)
                if b.name == path or b.name.startswith(path + "/")
            ]
        except Exception:
            return False, 0, 0
        return bool(blobs), sum(int(b.size or 0) for b in blobs), len(blobs)


def _backend(pipeline_root: str | os.PathLike[str]) -> _LocalRoot | _GcsRoot:
    root = os.fspath(pipeline_root)
    return _GcsRoot(root) if is_gcs(root) else _LocalRoot(root)


# --------------------------------------------------------------------------------------------
# Pipeline spec: artifact types and the tasks a run should have.


def load_pipeline_spec(spec: str | os.PathLike[str] | dict[str, Any]) -> dict[str, Any]:
    """A compiled pipeline (YAML or JSON file, or a dict; a Vertex AI PipelineJob JSON with a
    ``pipelineSpec`` key works too) as a dict."""
    if isinstance(spec, dict):
        data = spec
    else:
        path = Path(spec)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise DataError(
                f"cannot read pipeline spec {path}: {exc.strerror or exc}. Fix: pass the YAML "
                "that `pipeline.py compile` wrote"
            ) from exc
        import yaml  # type: ignore[import-untyped]  # kfp depends on PyYAML

        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            raise DataError(f"pipeline spec {path} is not YAML/JSON: {exc}") from exc
        if not docs or not isinstance(docs[0], dict):
            raise DataError(f"pipeline spec {path} is empty")
        data = docs[0]
    data = data.get("pipelineSpec", data)
    if "components" not in data and "root" not in data:
        raise DataError(
            "not a compiled KFP pipeline spec (no 'components'/'root'). Fix: pass the YAML "
            "that kfp.compiler.Compiler().compile wrote"
        )
    return data


def artifact_types_from_spec(spec: str | os.PathLike[str] | dict[str, Any]) -> dict[str, Any]:
    """``{"types": {task-or-component: {output: schemaTitle}}, "tasks": [...]}`` from a compiled
    pipeline. Keys are both the task names and the component names without ``comp-`` (the
    folder names kfp.local uses); ``tasks`` lists executor tasks with ``top_level`` (False for
    tasks inside a condition or loop)."""
    data = load_pipeline_spec(spec)
    components: dict[str, Any] = data.get("components", {}) or {}

    def outputs_of(comp_name: str) -> dict[str, str]:
        comp = components.get(comp_name, {}) or {}
        arts = (comp.get("outputDefinitions", {}) or {}).get("artifacts", {}) or {}
        return {
            out: ((a or {}).get("artifactType", {}) or {}).get("schemaTitle", ARTIFACT)
            for out, a in arts.items()
        }

    types: dict[str, dict[str, str]] = {}
    for comp_name in components:
        types[_strip_comp(comp_name)] = outputs_of(comp_name)
    tasks: list[dict[str, Any]] = []

    def walk(dag: dict[str, Any], top_level: bool) -> None:
        for task_name, task in (dag.get("tasks", {}) or {}).items():
            comp_name = ((task or {}).get("componentRef", {}) or {}).get("name", "")
            comp = components.get(comp_name, {}) or {}
            if "dag" in comp:
                walk(comp["dag"] or {}, False)
                continue
            types.setdefault(task_name, outputs_of(comp_name))
            tasks.append(
                {"task": task_name, "component": _strip_comp(comp_name), "top_level": top_level}
            )

    walk((data.get("root", {}) or {}).get("dag", {}) or {}, True)
    return {"types": types, "tasks": tasks}


def _strip_comp(name: str) -> str:
    return name[len("comp-") :] if name.startswith("comp-") else name


# --------------------------------------------------------------------------------------------
# Run record (optional, written by the local runner).


def record_run(
    run_dir: str | os.PathLike[str],
    status: str,
    *,
    pipeline_spec: str | os.PathLike[str] | dict[str, Any] | None = None,
    error: str | None = None,
    started: dt.datetime | None = None,
    finished: dt.datetime | None = None,
    tasks: dict[str, dict[str, Any]] | None = None,
    runner: dict[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """Write ``<run_dir>/kd_run.json``: what kfp.local knows but does not store.

    ``status`` (e.g. RUNNING / SUCCEEDED / FAILED / CANCELLED), the error message,
    start/finish times, per-task ``{"status", "start", "end", "attempts"}`` (ISO strings or
    datetimes), the artifact types of the compiled ``pipeline_spec`` and the ``runner``
    process (:func:`runner_identity`), by which a RUNNING record of a runner that no longer
    exists reads as INTERRUPTED. ``extra`` (JSON-ready; datetimes become ISO strings) is
    stored as given: the local runner keeps there what ``--resume`` needs (parameters, the
    pipeline, the cache root). :func:`describe_run` prefers these over what it derives.
    """
    record: dict[str, Any] = {"version": 1, "status": _normalize_status(status)}
    if runner:
        record["runner"] = runner
    if error:
        record["error"] = error
    if started:
        record["started"] = _iso(started)
    if finished:
        record["finished"] = _iso(finished)
    if tasks:
        record["tasks"] = _iso_all(tasks)
    record.update(_iso_all(extra))
    if pipeline_spec is not None:
        spec = artifact_types_from_spec(pipeline_spec)
        record["artifact_types"] = spec["types"]
        record["expected_tasks"] = spec["tasks"]
    path = Path(run_dir) / RUN_RECORD
    write_text_atomic(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def _iso_all(value: Any) -> Any:
    """``value`` with every datetime inside it (dicts, lists) as an ISO string."""
    if isinstance(value, dt.datetime):
        return _iso(value)
    if isinstance(value, dict):
        return {k: _iso_all(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_iso_all(v) for v in value]
    return value


def runner_identity() -> dict[str, Any]:
    """This process as a run record names its runner: pid and host."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def runner_alive(runner: dict[str, Any]) -> bool | None:
    """Whether the runner process a record names still runs: None when it ran on another host
    (nothing to check there). A pid that now belongs to another program counts as gone."""
    if not runner or runner.get("host") != socket.gethostname():
        return None
    pid = runner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): only whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return is_runner_cmdline(cmdline)


def is_runner_cmdline(cmdline: bytes) -> bool:
    """Whether a /proc command line (NUL-separated) is ``python -m local_runner ...``."""
    args = cmdline.split(b"\0")
    pairs = zip(args, args[1:], strict=False)
    return any(a == b"-m" and b == b"local_runner" for a, b in pairs) or any(
        a.endswith(b"local_runner/__main__.py") for a in args
    )


def _record_status(record: dict[str, Any]) -> str:
    status = _normalize_status(record["status"])
    if status == RUNNING and runner_alive(record.get("runner") or {}) is False:
        return INTERRUPTED
    return status


# --------------------------------------------------------------------------------------------
# Describe.


def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat(timespec="milliseconds") if t else None


def _parse_time(v: Any) -> dt.datetime | None:
    if isinstance(v, dt.datetime):
        return v if v.tzinfo else v.astimezone()
    if isinstance(v, str) and v:
        try:
            t = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            return None
        return t if t.tzinfo else t.astimezone()
    return None


def _json(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _task_dirs(run: _Run) -> dict[str, list[_File]]:
    tasks: dict[str, list[_File]] = {}
    for f in run.files:
        if "/" in f.rel:
            tasks.setdefault(f.rel.split("/", 1)[0], []).append(f)
    # a task folder whose outputs are all empty folders still counts (local only)
    if isinstance(run.uri, str) and not is_gcs(run.uri) and os.path.isdir(run.uri):
        for e in os.scandir(run.uri):
            if e.is_dir() and not e.name.startswith("."):
                tasks.setdefault(e.name, [])
    return tasks


def _task_name(folder: str) -> str:
    m = _TASK_ID_RE.match(folder)
    return m["name"] if m else folder


# kfp.local logs SUCCESS / FAILURE; KFP and Vertex AI say SUCCEEDED / FAILED.
_STATUS_ALIASES = {"SUCCESS": SUCCEEDED, "FAILURE": FAILED, "ERROR": FAILED}


def _normalize_status(status: Any) -> str:
    s = str(status).strip().upper()
    s = s.removeprefix("PIPELINE_STATE_").removeprefix("TASK_STATE_")
    return _STATUS_ALIASES.get(s, s)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _guess_type(
    name: str, metadata: dict[str, Any], exists: bool, is_dir: bool, head: bytes
) -> str:
    if "confusionMatrix" in metadata or "confidenceMetrics" in metadata:
        return CLASSIFICATION_METRICS
    if metadata and not exists and all(_is_number(v) for v in metadata.values()):
        return METRICS
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html")):
        return HTML
    lname = name.lower()
    if "html" in lname:
        return HTML
    if lname in ("md", "markdown") or lname.endswith(("_md", "markdown")):
        return MARKDOWN
    if text.startswith(b"# "):
        return MARKDOWN  # starts with a Markdown heading
    if "model" in lname or "teacher" in lname or "student" in lname:
        return MODEL
    if "metric" in lname:
        return METRICS
    if any(k in lname for k in ("data", "split", "train", "test", "val")):
        return DATASET
    return ARTIFACT


def _select(runs: list[_Run], run: str, root: str) -> _Run:
    ordered = _newest_first(runs)
    known = [r.run_id for r in ordered]
    wanted = run.rstrip("/")
    if wanted in ("latest", "last") and ordered:
        return ordered[0]
    for r in ordered:
        if wanted in (r.run_id, r.uri, f"{r.group}/{r.run_id}"):
            return r
    base = wanted.rsplit("/", 1)[-1]
    matches = [r for r in ordered if r.run_id == base] or [
        r for r in ordered if r.run_id.startswith(wanted)
    ]
    if len(matches) == 1:
        return matches[0]
    shown = ", ".join(known[:20]) + (f" ... and {len(known) - 20} more" if len(known) > 20 else "")
    if len(matches) > 1:
        raise RunNotFoundError(
            f"run {run!r} is ambiguous in {root}: it matches "
            + ", ".join(r.run_id for r in matches)
            + ". Fix: give the full run id",
            known,
        )
    raise RunNotFoundError(
        f"no run {run!r} in {root}. Known runs (newest first): {shown}. "
        "Fix: pass one of these ids (or 'latest')",
        known,
    )


def _newest_first(runs: list[_Run]) -> list[_Run]:
    epoch = dt.datetime.fromtimestamp(0, dt.UTC)
    return sorted(runs, key=lambda r: (r.created or epoch, r.run_id), reverse=True)


def _all_runs(pipeline_root: str | os.PathLike[str]) -> tuple[_LocalRoot | _GcsRoot, list[_Run]]:
    backend = _backend(pipeline_root)
    runs = backend.runs()
    if not runs:
        hint = ""
        if isinstance(backend, _LocalRoot) and _has_task_with_output(backend.root):
            hint = (
                f" {backend.display} looks like a single run folder: pass its parent "
                f"({backend.root.parent}) as the pipeline root."
            )
        elif isinstance(backend, _LocalRoot) and (backend.root / EXECUTOR_OUTPUT).is_file():
            hint = f" {backend.display} looks like a task folder: pass the folder two levels up."
        raise NotAPipelineRootError(f"no runs found under {backend.display}.{hint} {LAYOUT_HELP}")
    return backend, runs


def list_runs(pipeline_root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every run under ``pipeline_root``, newest first.

    Each: ``run_id``, ``pipeline_name``, ``created`` (ISO 8601), ``status`` and
    ``status_source`` ("record" from kd_run.json, else "derived"), ``tasks`` (task folders),
    ``uri`` and ``layout`` ("local" or "gcs"). Raises :class:`NotAPipelineRootError`.
    """
    backend, runs = _all_runs(pipeline_root)
    out = []
    for r in _newest_first(runs):
        backend.load(r)
        record = _json(backend.read_text(r, RUN_RECORD)) if _has_file(r, RUN_RECORD) else None
        task_dirs = _task_dirs(r)
        done = {
            t
            for t, files in task_dirs.items()
            if any(f.rel == f"{t}/{EXECUTOR_OUTPUT}" for f in files)
        }
        if record and record.get("status"):
            status, source = _record_status(record), "record"
        else:
            status, source = (
                _derived_run_status(len(task_dirs), len(done), missing_top_level=0),
                "derived",
            )
        out.append(
            {
                "run_id": r.run_id,
                "pipeline_name": r.pipeline_name,
                "created": _iso(r.created),
                "status": status,
                "status_source": source,
                "tasks": len(task_dirs),
                "uri": r.uri,
                "layout": "gcs" if is_gcs(r.uri) else "local",
            }
        )
    return out


def _has_file(run: _Run, rel: str) -> bool:
    return any(f.rel == rel for f in run.files)


def _derived_run_status(n_tasks: int, n_done: int, missing_top_level: int) -> str:
    if n_tasks == 0:
        return UNKNOWN
    if n_done < n_tasks or missing_top_level:
        return INCOMPLETE
    return SUCCEEDED


def describe_run(
    pipeline_root: str | os.PathLike[str],
    run: str,
    *,
    pipeline_spec: str | os.PathLike[str] | dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Tasks, artifacts and metrics of one run (``run``: its id, a unique prefix, or "latest").

    Returns a JSON-friendly dict: the :func:`list_runs` fields plus ``tasks`` (name, folder,
    status, start, end, duration_s, parameters, artifacts), ``artifacts`` (every output: task,
    name, type, type_source, uri, exists, size_bytes, files, metadata), ``metrics`` (the
    comparison of the run's Metrics artifacts: ``columns`` and ``rows``), ``classification``
    (confusion matrices with their accuracy), ``report`` (the HTML report artifact's path or
    URI, or None), ``reports`` / ``markdown`` (all such artifacts) and ``notes`` (how derived
    values were derived). Raises :class:`RunNotFoundError` (with the known runs) or
    :class:`NotAPipelineRootError`.
    """
    backend, runs = _all_runs(pipeline_root)
    r = backend.load(_select(runs, str(run), backend.display))
    notes: list[str] = []

    record = _json(backend.read_text(r, RUN_RECORD)) if _has_file(r, RUN_RECORD) else None
    spec_types: dict[str, dict[str, str]] = {}
    expected: list[dict[str, Any]] = []
    if pipeline_spec is not None:
        spec = artifact_types_from_spec(pipeline_spec)
        spec_types, expected = spec["types"], spec["tasks"]
    elif record and record.get("artifact_types"):
        spec_types = record.get("artifact_types") or {}
        expected = record.get("expected_tasks") or []
    record_tasks: dict[str, Any] = (record or {}).get("tasks") or {}

    local = isinstance(backend, _LocalRoot)
    tasks: list[dict[str, Any]] = []
    for folder, files in sorted(_task_dirs(r).items()):
        name = _task_name(folder) if not local else folder
        eo_file = next((f for f in files if f.rel == f"{folder}/{EXECUTOR_OUTPUT}"), None)
        eo = _json(backend.read_text(r, eo_file.rel)) if eo_file else None
        task: dict[str, Any] = {
            "name": name,
            "folder": folder,
            "uri": f"{r.uri}/{folder}" if is_gcs(r.uri) else str(Path(r.uri) / folder),
            "status": SUCCEEDED if eo_file else INCOMPLETE,
            "status_source": "derived",
            "end_time": eo_file.mtime if eo_file else None,
            "first_write": min((f.mtime for f in files), default=None),
            "last_write": max((f.mtime for f in files), default=None),
            "parameters": dict((eo or {}).get("parameterValues", {}) or {}),
            "artifacts": [],
        }
        types = spec_types.get(folder) or spec_types.get(name) or {}
        outputs: dict[str, dict[str, Any]] = {}
        for out_name, art_list in ((eo or {}).get("artifacts", {}) or {}).items():
            for a in (art_list or {}).get("artifacts", []) or []:
                outputs.setdefault(out_name, a or {})
        if eo is None:  # a failed or running task: whatever outputs it left
            for f in files:
                rest = f.rel[len(folder) + 1 :]
                top = rest.split("/", 1)[0]
                if top and top != EXECUTOR_OUTPUT and not top.startswith("."):
                    outputs.setdefault(top, {"name": top})
            if local:
                for e in os.scandir(Path(r.uri) / folder):
                    if not e.name.startswith(".") and e.name != EXECUTOR_OUTPUT:
                        outputs.setdefault(e.name, {"name": e.name})
        for out_name, a in sorted(outputs.items()):
            task["artifacts"].append(
                _describe_artifact(backend, r, folder, name, out_name, a, types, files)
            )
        tasks.append(task)

    _apply_times(tasks, r, record_tasks, local, notes)
    far = dt.datetime.max.replace(tzinfo=dt.UTC)
    tasks.sort(key=lambda t: (_parse_time(t["start"] or t["end"]) or far, t["name"]))
    seen = {t["folder"] for t in tasks} | {t["name"] for t in tasks}
    missing_top = 0
    for exp in expected:
        if exp["task"] not in seen and exp["component"] not in seen:
            missing_top += 1 if exp.get("top_level") else 0
            tasks.append(
                {
                    "name": exp["task"],
                    "folder": None,
                    "uri": None,
                    "status": NOT_RUN,
                    "status_source": "derived",
                    "start": None,
                    "end": None,
                    "duration_s": None,
                    "parameters": {},
                    "artifacts": [],
                }
            )
    if any(t["status"] == NOT_RUN for t in tasks):
        notes.append(
            "NOT_RUN: in the pipeline spec but no folder on disk (failed before writing any "
            "output, skipped by a condition, or the run stopped earlier)"
        )
    for t in tasks:
        rt = record_tasks.get(t["name"]) or record_tasks.get(t.get("folder") or "")
        if rt and rt.get("status"):
            t["status"], t["status_source"] = _normalize_status(rt["status"]), "record"
        if rt and rt.get("reused_from"):
            t["reused_from"] = rt["reused_from"]
        if rt and len(rt.get("attempts") or []) > 1:
            t["attempts"] = rt["attempts"]

    if record and record.get("status"):
        status, source = _record_status(record), "record"
        if status == INTERRUPTED:
            for t in tasks:
                if t["status"] == RUNNING:
                    t["status"] = INTERRUPTED
            notes.append(
                f"INTERRUPTED: its runner (pid {record['runner'].get('pid')}) ended without "
                "closing the run (kill -9, a crash, or the machine stopped); the next "
                "`python -m local_runner run` on this pipeline root stops what it left running"
            )
    else:
        n_real = [t for t in tasks if t["status"] != NOT_RUN]
        done = [t for t in n_real if t["status"] == SUCCEEDED]
        status = _derived_run_status(len(n_real), len(done), missing_top)
        source = "derived"
    if any(t["status"] == INCOMPLETE for t in tasks):
        notes.append(
            "INCOMPLETE: a task folder without executor_output.json (the task failed, or it "
            "is still running)"
        )

    artifacts = [a for t in tasks for a in t["artifacts"]]
    if any(a["type_source"] == "guessed" for a in artifacts):
        notes.append(
            "types marked 'guessed' were inferred from metadata, content and name: kfp.local "
            "does not store artifact types; pass pipeline_spec= (the compiled YAML) for exact ones"
        )
    metrics = _metrics_table(artifacts)
    classification = _classification(artifacts)
    html = [a for a in artifacts if a["type"] == HTML]
    html.sort(key=lambda a: (0 if "report" in a["name"].lower() else 1, a["task"], a["name"]))
    reused_from = sorted({t["reused_from"] for t in tasks if t.get("reused_from")})
    if not html and reused_from and r.run_id not in reused_from:
        # Every report was reused from an earlier run (--cache): show where it is.
        for src in reused_from:
            try:
                earlier = describe_run(pipeline_root, src)
            except DataError:
                continue
            html = [a for a in earlier["artifacts"] if a["type"] == HTML]
            if html:
                break
    started = _parse_time((record or {}).get("started")) or r.created
    finished = _parse_time((record or {}).get("finished")) or max(
        (t["_end"] for t in tasks if t.get("_end")), default=None
    )
    for t in tasks:
        t.pop("_end", None)
    return {
        "run_id": r.run_id,
        "pipeline_name": r.pipeline_name,
        "pipeline_root": backend.display,
        "layout": "gcs" if is_gcs(r.uri) else "local",
        "uri": r.uri,
        "created": _iso(r.created),
        "started": _iso(started),
        "finished": _iso(finished),
        "duration_s": _seconds(started, finished),
        "status": status,
        "status_source": source,
        "error": (record or {}).get("error"),
        "tasks": tasks,
        "artifacts": artifacts,
        "metrics": metrics,
        "classification": classification,
        "report": _browser_path(html[0]) if html else None,
        "reports": [_browser_path(a) for a in html],
        "tensorboard": _tensorboard_logdirs(artifacts),
        "markdown": [a["path"] or a["uri"] for a in artifacts if a["type"] == MARKDOWN],
        "notes": notes,
    }


def _tensorboard_logdirs(artifacts: list[dict[str, Any]]) -> dict[str, str]:
    """``{task: logdir}`` of every Model artifact whose folder holds TensorBoard event files
    (``tensorboard/``, written by the training stages); local folders only are looked into."""
    from kd.model_folder import TENSORBOARD_DIR

    found = {}
    for a in artifacts:
        path = a.get("path")
        if path and (Path(path) / TENSORBOARD_DIR).is_dir():
            key, n = a["task"], 2
            while key in found:  # the sweep's branches share a task name
                key, n = f"{a['task']}-{n}", n + 1
            found[key] = str(Path(path) / TENSORBOARD_DIR)
    return found


def tensorboard_command(logdirs: dict[str, str]) -> str | None:
    """The ``tensorboard`` line that shows a run's training curves side by side."""
    if not logdirs:
        return None
    spec = ",".join(f"{task}:{path}" for task, path in sorted(logdirs.items()))
    return f"tensorboard --logdir_spec {spec}"


def _seconds(a: dt.datetime | None, b: dt.datetime | None) -> float | None:
    return round((b - a).total_seconds(), 3) if a and b else None


def _apply_times(
    tasks: list[dict[str, Any]],
    run: _Run,
    record_tasks: dict[str, Any],
    local: bool,
    notes: list[str],
) -> None:
    """Fill start/end/duration_s of every task (record first, then derived)."""

    # kfp.local runs one task at a time: order by when each one finished writing.
    def finished(t: dict[str, Any]) -> dt.datetime:
        return (
            t["end_time"] or t["last_write"] or run.created or dt.datetime.fromtimestamp(0, dt.UTC)
        )

    previous_end = run.created
    for t in sorted(tasks, key=finished):
        end = t["end_time"]
        start = previous_end if local else t["first_write"]
        if start and end and start > end:
            start = t["first_write"]
        rt = record_tasks.get(t["name"]) or record_tasks.get(t["folder"]) or {}
        start = _parse_time(rt.get("start")) or start
        end = _parse_time(rt.get("end")) or end
        t["start"] = _iso(start)
        t["end"] = _iso(end)
        t["duration_s"] = _seconds(start, end) if end else None
        t["_end"] = end or t["last_write"]
        if local:
            previous_end = end or t["last_write"] or previous_end
    for t in tasks:
        for k in ("end_time", "first_write", "last_write"):
            t.pop(k, None)
    if tasks and not all(
        (record_tasks.get(t["name"]) or {}).get("start") for t in tasks if t.get("folder")
    ):
        notes.append(
            "task times are derived: end = when executor_output.json was written; "
            + (
                "start = when the previous task ended (kfp.local runs tasks one at a time; the "
                "first starts at the run's timestamp)"
                if local
                else "start = when the task's first object was created"
            )
        )


def _describe_artifact(
    backend: _LocalRoot | _GcsRoot,
    run: _Run,
    folder: str,
    task_name: str,
    out_name: str,
    a: dict[str, Any],
    types: dict[str, str],
    files: list[_File],
) -> dict[str, Any]:
    metadata = dict(a.get("metadata") or {})
    uri, rel = backend.resolve(run, folder, out_name, str(a.get("uri") or ""))
    if rel is not None:
        own = [f for f in files if f.rel == rel or f.rel.startswith(rel + "/")]
        exists, size, count = bool(own), sum(f.size for f in own), len(own)
        if not own and isinstance(backend, _LocalRoot) and os.path.isdir(uri):
            exists = True  # an empty folder
    else:
        exists, size, count = backend.size(uri)
    is_dir = count > 1 or (count == 1 and rel is not None and not any(f.rel == rel for f in files))
    schema = ((a.get("type") or {}) if isinstance(a.get("type"), dict) else {}).get("schemaTitle")
    if schema:
        type_source = "executor_output"
    elif out_name in types:
        schema, type_source = types[out_name], "pipeline_spec"
    else:
        head = backend.head(uri) if exists and not is_dir else b""
        schema, type_source = _guess_type(out_name, metadata, exists, is_dir, head), "guessed"
    return {
        "task": task_name,
        "name": out_name,
        "type": schema,
        "type_source": type_source,
        "uri": uri,
        "path": uri if isinstance(backend, _LocalRoot) and exists else None,
        "exists": exists,
        "is_dir": is_dir,
        "size_bytes": size,
        "files": count,
        "metadata": metadata,
    }


HTML_SUFFIX = ".html"


def browser_copy(path: str | os.PathLike[str]) -> Path:
    """Where a local HTML artifact's file opens in a browser as a page: ``PATH.html``.

    KFP names an artifact's file after the output (``report``, ``heatmap``), without an
    extension: KFP's UI renders it, but a browser given the bare path shows its source. The
    local runner writes this copy next to each such file when a run ends
    (:func:`add_browser_copies`).
    """
    p = Path(path)
    return p if p.suffix == HTML_SUFFIX else p.with_name(p.name + HTML_SUFFIX)


def add_browser_copies(run: dict[str, Any]) -> list[Path]:
    """Write :func:`browser_copy` of each local HTML artifact of a described run; returns them.

    A hard link where the file system allows it (no extra space), else a copy; an existing
    one is left alone. Run by ``local_runner run`` after the pipeline, never by ``inspect``.
    """
    made = []
    for a in run["artifacts"]:
        if a["type"] != HTML or not a["path"] or a["is_dir"]:
            continue
        src = Path(a["path"])
        dst = browser_copy(src)
        if dst == src or dst.exists():
            continue
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
        made.append(dst)
    return made


def _browser_path(a: dict[str, Any]) -> str:
    """A report's path as a browser should get it (the ``.html`` copy when there is one)."""
    if a["path"] and not a["is_dir"] and browser_copy(a["path"]).is_file():
        return str(browser_copy(a["path"]))
    return str(a["path"] or a["uri"])


def _metrics_table(artifacts: list[dict[str, Any]]) -> dict[str, Any]:
    columns: list[str] = []
    rows = []
    for a in artifacts:
        if a["type"] != METRICS:
            continue
        values = {k: v for k, v in a["metadata"].items() if _is_number(v)}
        for k in values:
            if k not in columns:
                columns.append(k)
        rows.append({"task": a["task"], "artifact": a["name"], "values": values})
    return {"columns": columns, "rows": rows}


def _classification(artifacts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for a in artifacts:
        cm = a["metadata"].get("confusionMatrix") if a["type"] == CLASSIFICATION_METRICS else None
        if not isinstance(cm, dict):
            continue
        labels = [s.get("displayName", "") for s in cm.get("annotationSpecs", []) or []]
        matrix = [list((row or {}).get("row", [])) for row in cm.get("rows", []) or []]
        total = sum(sum(row) for row in matrix)
        correct = sum(row[i] for i, row in enumerate(matrix) if i < len(row))
        out.append(
            {
                "task": a["task"],
                "artifact": a["name"],
                "labels": labels,
                "matrix": matrix,
                "accuracy": round(correct / total, 6) if total else None,
            }
        )
    return out


# --------------------------------------------------------------------------------------------
# Text.


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    body = [header, *rows]
    widths = [max(len(str(r[i])) for r in body) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in body
    )


def _short_time(iso: str | None) -> str:
    return iso[:19].replace("T", " ") if iso else "-"


def _fmt_value(v: Any) -> str:
    if _is_number(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    return str(v)


def format_runs(runs: list[dict[str, Any]]) -> str:
    """``list_runs`` output as a table."""
    if not runs:
        return "no runs"
    return _table(
        ["RUN", "PIPELINE", "CREATED", "STATUS", "TASKS"],
        (
            [
                r["run_id"],
                r["pipeline_name"] or "-",
                _short_time(r["created"]),
                r["status"],
                str(r["tasks"]),
            ]
            for r in runs
        ),
    )


def format_run(run: dict[str, Any]) -> str:
    """``describe_run`` output as text: tasks, artifacts, metrics comparison, report."""
    lines = [
        f"Run       {run['run_id']}",
        f"Pipeline  {run['pipeline_name'] or '-'}",
        f"Location  {run['uri']}",
        f"Status    {run['status']}" + (" (derived)" if run["status_source"] == "derived" else ""),
        f"Started   {_short_time(run['started'])}"
        + (f"   duration {run['duration_s']:.1f} s" if run["duration_s"] is not None else ""),
    ]
    if run.get("error"):
        lines.append(f"Error     {run['error']}")
    lines += ["", "Tasks"]
    lines.append(
        _table(
            ["TASK", "STATUS", "START", "DURATION"],
            (
                [
                    t["name"],
                    t["status"],
                    _short_time(t["start"]),
                    f"{t['duration_s']:.1f} s" if t["duration_s"] is not None else "-",
                ]
                for t in run["tasks"]
            ),
        )
    )
    for t in run["tasks"]:
        if t.get("reused_from"):
            lines.append(f"  {t['name']}: reused the outputs of run {t['reused_from']}")
        for i, a in enumerate(t.get("attempts") or [], start=1):
            took = _seconds(_parse_time(a.get("start")), _parse_time(a.get("end")))
            code = a.get("exit_code")
            lines.append(
                f"  {t['name']} attempt {i}: {a.get('status', '?')}"
                + (f", exit status {code}" if code is not None else "")
                + f", started {_short_time(a.get('start'))}"
                + (f", {took:.1f} s" if took is not None else "")
            )
    if run["artifacts"]:
        lines += ["", "Artifacts"]
        lines.append(
            _table(
                ["TASK/OUTPUT", "TYPE", "SIZE", "URI"],
                (
                    [
                        f"{a['task']}/{a['name']}",
                        a["type"] + ("?" if a["type_source"] == "guessed" else ""),
                        _human(a["size_bytes"]) if a["exists"] else "-",
                        a["uri"],
                    ]
                    for a in run["artifacts"]
                ),
            )
        )
        meta = [
            f"  {a['task']}/{a['name']}: "
            + ", ".join(f"{k}={_fmt_value(v)}" for k, v in sorted(a["metadata"].items()))
            for a in run["artifacts"]
            if a["metadata"] and a["type"] not in (METRICS, CLASSIFICATION_METRICS)
        ]
        if meta:
            lines += ["", "Metadata", *meta]
    m = run["metrics"]
    if m["rows"]:
        lines += ["", "Metrics"]
        lines.append(
            _table(
                ["TASK/OUTPUT", *m["columns"]],
                (
                    [f"{row['task']}/{row['artifact']}"]
                    + [_fmt_value(row["values"].get(c, "-")) for c in m["columns"]]
                    for row in m["rows"]
                ),
            )
        )
    for c in run["classification"]:
        acc = f" accuracy {c['accuracy']:.4f}" if c["accuracy"] is not None else ""
        lines += ["", f"Confusion matrix {c['task']}/{c['artifact']}{acc}"]
        lines.append(
            _table(
                ["", *c["labels"]],
                (
                    [lab, *map(_fmt_value, row)]
                    for lab, row in zip(c["labels"], c["matrix"], strict=False)
                ),
            )
        )
    lines += ["", f"Report    {run['report'] or '-'}"]
    board = tensorboard_command(run.get("tensorboard") or {})
    if board:
        lines.append(f"Curves    {board}   (pip install tensorboard)")
    if run["notes"]:
        lines += ["", "Notes", *(f"  - {n}" for n in run["notes"])]
    return "\n".join(lines)
