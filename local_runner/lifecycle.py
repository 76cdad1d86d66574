"""A local run's life: its name fixed before it starts, Ctrl-C / SIGTERM, and what a killed
runner leaves behind.

- **Stopping.** :func:`cancel_on_signals` turns SIGINT and SIGTERM into KeyboardInterrupt
  (not an ``Exception``, so nothing inside ``kfp.local`` swallows it); the runner then stops
  this run's work (:func:`stop_own_work`: its containers, found by the ``kd-pipeline.session``
  label every container of the run carries, and the subprocess runner's stage processes),
  writes the run record with status CANCELLED and exits 130.
- **kill -9.** Nothing of the runner survives to clean up, so the record it wrote when the
  run started (RUNNING, with its pid and host) reads as INTERRUPTED once that pid is gone
  (:func:`kd.runs.runner_alive`), and the next run on the same pipeline root stops what was
  left running (:func:`stop_orphans`) before it starts, so that an orphaned stage cannot write
  into a run that has ended.

Process discovery reads ``/proc`` (Linux, where Docker runs these containers); elsewhere
only the containers are found.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kd import runs

SESSION_LABEL = "kd-pipeline.session"
ROOT_LABEL = "kd-pipeline.pipeline-root"
PID_LABEL = "kd-pipeline.runner-pid"
HOST_LABEL = "kd-pipeline.runner-host"
RUN_LABEL = "kd-pipeline.run"
EXECUTOR = b"kfp.dsl.executor_main"  # what the subprocess runner's children run


def signal_name(exc: KeyboardInterrupt) -> str:
    """Which signal a KeyboardInterrupt raised by :func:`cancel_on_signals` stands for."""
    return str(exc.args[0]) if exc.args else "SIGINT"


def new_run_name(pipeline_name: str, now: dt.datetime | None = None) -> str:
    """A run name as ``kfp.local`` makes them (``<pipeline>-YYYY-mm-dd-HH-MM-SS-ffffff``)."""
    return f"{pipeline_name}-{(now or dt.datetime.now()).strftime('%Y-%m-%d-%H-%M-%S-%f')}"


@contextmanager
def fixed_run_name(name: str) -> Iterator[None]:
    """Make ``kfp.local`` name the run ``name``: the runner knows the run's folder before the
    first task starts (its record is written at once), and a resumed run reuses the folder
    of the run it continues (its finished tasks' outputs and the killed task's checkpoint)."""
    from kfp.local import executor_input_utils

    original = executor_input_utils.get_local_pipeline_resource_name
    executor_input_utils.get_local_pipeline_resource_name = lambda pipeline_name: name
    try:
        yield
    finally:
        executor_input_utils.get_local_pipeline_resource_name = original


@contextmanager
def _handling(handler: Any) -> Iterator[None]:
    """SIGINT and SIGTERM go to ``handler`` within the block; the old handlers come back."""
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def cancel_on_signals() -> Any:
    """Within the block, SIGINT and SIGTERM raise ``KeyboardInterrupt("SIGINT" | "SIGTERM")``.

    KeyboardInterrupt itself (not a subclass), because ``subprocess.Popen.__exit__`` (which
    the subprocess runner's task handler uses) returns at once for exactly that type, where
    for any other exception it waits for the stage process to end on its own.
    """

    def handler(signum: int, frame: Any) -> None:
        # A second signal while the first is handled is ignored: cleanup must finish.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    return _handling(handler)


def ignore_signals() -> Any:
    """Within the block, SIGINT and SIGTERM are ignored (the cleanup after a cancel)."""
    return _handling(signal.SIG_IGN)


@contextmanager
def exit_codes(callback: Any) -> Iterator[None]:
    """Call ``callback(code)`` with each stage process's exit status (kfp.local keeps only
    SUCCESS or FAILURE): 137 says the container or process was killed."""
    from kfp.local import docker_task_handler, subprocess_task_handler

    originals = (
        docker_task_handler.run_docker_container,
        subprocess_task_handler.run_local_subprocess,
    )

    def wrap(fn: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> int:
            code = fn(*args, **kwargs)
            callback(code)
            return int(code)

        return run

    docker_task_handler.run_docker_container = wrap(originals[0])
    subprocess_task_handler.run_local_subprocess = wrap(originals[1])
    try:
        yield
    finally:
        docker_task_handler.run_docker_container = originals[0]
        subprocess_task_handler.run_local_subprocess = originals[1]


def container_labels(session: str, root: Path, run_name: str) -> dict[str, str]:
    """The labels every container of this run carries."""
    return {
        SESSION_LABEL: session,
        ROOT_LABEL: str(root),
        PID_LABEL: str(os.getpid()),
        HOST_LABEL: socket.gethostname(),
        RUN_LABEL: run_name,
    }


def _procs() -> Iterator[tuple[int, int, bytes]]:
    """(pid, parent pid, command line) of every process /proc shows."""
    proc = Path("/proc")
    if not proc.is_dir():
        return
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmdline = (d / "cmdline").read_bytes()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        yield int(d.name), ppid, cmdline


def _terminate(pids: list[int], grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL what is left after ``grace_s``."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
        time.sleep(0.1)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the subprocess runner starts ``sh``, which starts the
    stage's Python), deepest first."""
    children: dict[int, list[int]] = {}
    for p, ppid, _ in _procs():
        children.setdefault(ppid, []).append(p)
    found, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found[::-1]


def _containers(client: Any, label: str) -> list[Any]:
    try:
        return list(client.containers.list(filters={"label": label}))
    except Exception:  # the engine went away: nothing of ours to stop there
        return []


def stop_own_work(session: str, root: Path, client: Any | None) -> list[str]:
    """Stop this run's containers and child stage processes; what was stopped, for people."""
    stopped = []
    if client is not None:
        for c in _containers(client, f"{SESSION_LABEL}={session}"):
            try:
                c.kill()
                stopped.append(f"container {c.name}")
            except Exception:
                pass
    pids = descendants(os.getpid())
    _terminate(pids)
    stopped += [f"stage process {p}" for p in pids]
    return stopped


def stop_orphans(root: Path, client: Any | None) -> list[str]:
    """Stop stages of earlier runs on ``root`` whose runner is gone (killed with -9): their
    containers (by label) and subprocess-runner processes. Returns a line for each."""
    lines = []
    if client is not None:
        for c in _containers(client, f"{ROOT_LABEL}={root}"):
            labels = c.labels or {}
            pid = labels.get(PID_LABEL, "")
            owner = {"pid": int(pid) if pid.isdigit() else -1, "host": labels.get(HOST_LABEL)}
            if runs.runner_alive(owner) is not False:
                continue  # its runner still runs (or ran on another host): not ours to stop
            try:
                c.kill()
            except Exception:
                continue
            lines.append(
                f"stopped container {c.name} of run {labels.get(RUN_LABEL, '?')}: its runner "
                f"(pid {pid}) was killed and the stage would have gone on writing into that run"
            )
    table = {pid: (ppid, cmd) for pid, ppid, cmd in _procs()}

    def under_a_runner(pid: int) -> bool:  # a local_runner process above it (not only init)
        seen = set()
        while pid in table and pid not in seen:
            seen.add(pid)
            pid, cmd = table[pid][0], table.get(table[pid][0], (0, b""))[1]
            if runs.is_runner_cmdline(cmd):
                return True
        return False

    orphans = [
        pid
        for pid, (_, cmd) in table.items()
        if EXECUTOR in cmd and str(root).encode() in cmd and not under_a_runner(pid)
    ]
    orphans += [  # the ``sh`` the subprocess runner started each stage in
        ppid
        for ppid in {table[pid][0] for pid in orphans}
        if ppid in table and table[ppid][1].split(b"\0")[0] in (b"sh", b"/bin/sh")
    ]
    orphans = sorted(set(orphans))
    _terminate(orphans)
    lines += [
        f"stopped process {p}, a stage of an earlier run on this root whose runner was killed"
        for p in orphans
    ]
    return lines
