"""How busy the device was in a profiler trace of training steps, and on what.

    python -m bench.trace_summary TRACES_DIR [--out FILE.json]

``TRACES_DIR`` is what ``bench.step_time --trace`` wrote on the device: one folder per traced
run (``teacher-jit``, ``teacher-fit``, ...), each holding the trace JAX's profiler wrote
(``plugins/profile/<run>/<host>.xplane.pb``) and ``meta.json`` (the number of training steps
traced and their wall time on the host clock, measured around the traced loop up to the last
result being ready). Reading an XPlane needs its protobuf classes, which TensorFlow ships
(``tensorflow.tsl.profiler.protobuf.xplane_pb2``): run this on the development machine, on
the traces fetched from the device (which has no TensorFlow).

Per traced run, in ms per training step (``steps`` from ``meta.json``):

- ``wall_ms_per_step``: host wall time / steps;
- ``device_busy_ms_per_step``: the union of every kernel and copy interval on the device's
  stream lines (overlapping streams counted once) / steps, and ``device_busy_fraction`` =
  busy / wall. A fraction near 1 means the device itself limits the step (then
  ``kernels_per_step`` and ``mean_kernel_us`` say whether it is arithmetic or many small
  kernels); far below 1, the device waits for the host (input, Keras's loop, dispatch);
- ``kernels_per_step``, ``mean_kernel_us``, ``copies_per_step``, ``copy_ms_per_step``
  (host-device transfers: events named ``Memcpy*``/``Memset*``);
- ``top_kernels``: the kernels with the most device time, ms and launches per step;
- ``untraced_ms_per_step`` (from ``meta.json``): the same kind of loop's time per step
  without the profiler (``bench.step_time``'s timed runs, over ``--steps`` steps).
  Tracing changes the run (the profiler adds a cost to every kernel launch, and XLA may
  launch kernels one by one where it would otherwise replay a captured CUDA graph), so the
  traces say where the time goes, and the untraced times how much there is;
- ``host_top``: the host's Python frames (JAX's profiler traces Python calls) and compiled-
  function calls (``PjitFunction(...)``: the dispatch, which blocks when the device falls
  behind) with the most inclusive time, ms and calls per step: where ``fit``'s host time goes
  (``BatchSequence.__getitem__`` is the batches, ``on_train_batch_end`` the callbacks).

A trace with no device plane (a CPU run, or a profiler that could not reach the GPU) is
reported as ``{"device": null, ...}`` with the wall figures only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# Lines the profiler derives from the stream lines (present in some traces): counting them too
# would count each kernel twice.
DERIVED_LINES = {
    "XLA Modules",
    "XLA Ops",
    "Async XLA Ops",
    "Steps",
    "Framework Ops",
    "Framework Name Scope",
    "Source code",
    "Launch Stats",
    "XLA TraceMe",
}
COPY_PREFIXES = ("memcpy", "memset")


def _xplane_pb2() -> Any:
    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise SystemExit(
            "reading an XPlane trace needs TensorFlow's protobuf classes "
            "(tensorflow.tsl.profiler.protobuf.xplane_pb2): run this in the project's .venv"
        ) from exc
    return xplane_pb2


def read_space(path: Path) -> Any:
    """The XSpace in one ``.xplane.pb`` file."""
    space = _xplane_pb2().XSpace()
    space.ParseFromString(path.read_bytes())
    return space


def _union_ps(intervals: list[tuple[int, int]]) -> int:
    total, end = 0, None
    start = 0
    for s, e in sorted(intervals):
        if end is None or s > end:
            if end is not None:
                total += end - start
            start, end = s, e
        else:
            end = max(end, e)
    if end is not None:
        total += end - start
    return total


def _tally(items: Any) -> dict[str, tuple[float, int]]:
    """``(name, ms)`` pairs summed per name: ``{name: (total ms, count)}``."""
    found: dict[str, tuple[float, int]] = {}
    for name, ms in items:
        total, count = found.get(name, (0.0, 0))
        found[name] = (total + ms, count + 1)
    return found


def device_activity(space: Any) -> dict[str, list[tuple[str, int, int]]]:
    """Per device plane (``/device:...``): ``(name, start_ps, end_ps)`` of every event on its
    activity lines: the ``Stream ...`` lines where there are any, else every line that is not
    derived from them."""
    found: dict[str, list[tuple[str, int, int]]] = {}
    for plane in space.planes:
        if not plane.name.startswith("/device:"):
            continue
        lines = [ln for ln in plane.lines if ln.name.startswith("Stream")]
        if not lines:
            lines = [ln for ln in plane.lines if ln.name not in DERIVED_LINES]
        events = []
        for line in lines:
            base = line.timestamp_ns * 1000
            for ev in line.events:
                meta = plane.event_metadata.get(ev.metadata_id)
                name = (meta.display_name or meta.name) if meta is not None else "?"
                start = base + ev.offset_ps
                events.append((name, start, start + ev.duration_ps))
        if events:
            found[plane.name] = events
    return found


def host_calls(space: Any) -> dict[str, tuple[float, int]]:
    """Inclusive ms and count per name of the Python frames (``$file.py:line name``) and the
    compiled-function calls (``PjitFunction(name)``) on the host planes, the bench's own
    frames (its timing callbacks, the profiler's stop) left out.

    A call nested in a call of the same name on the same thread (JAX records each compiled
    call as two nested events; recursion) counts once, with the outer call's time. The main
    thread is the line with the most such events; names from the other threads carry
    `` [thread K]`` (K = 1, 2, ... in trace order): their time overlaps the main thread's and
    includes their waits.
    """

    def wanted(plane: Any, line: Any) -> list[tuple[str, Any]]:
        """The line's Python frames and compiled calls, by start (outer calls first)."""
        named = []
        for ev in line.events:
            meta = plane.event_metadata.get(ev.metadata_id)
            name = meta.name if meta is not None else ""
            if not (name.startswith("$") or name.startswith("PjitFunction(")):
                continue
            if "step_time.py" in name or "profiler.py" in name:
                continue
            named.append((name, ev))
        return sorted(named, key=lambda ne: (ne[1].offset_ps, -ne[1].duration_ps))

    calls: list[tuple[str, float]] = []
    for plane in space.planes:
        if not plane.name.startswith("/host:"):
            continue
        lines = [wanted(plane, line) for line in plane.lines]
        busiest = max(range(len(lines)), key=lambda k: len(lines[k]), default=-1)
        others = 0
        for k, events in enumerate(lines):
            if not events:
                continue
            thread = ""
            if k != busiest:
                others += 1
                thread = f" [thread {others}]"
            open_until: dict[str, int] = {}  # name -> end of its outermost call so far
            for name, ev in events:
                if ev.offset_ps < open_until.get(name, -1):
                    continue  # inside a call of the same name
                open_until[name] = ev.offset_ps + ev.duration_ps
                calls.append((name + thread, ev.duration_ps / 1e9))
    return _tally(calls)


def summarize(space: Any, steps: int, wall_s: float, top: int = 8) -> dict[str, Any]:
    """The per-step figures of the module docstring for one traced run."""
    if steps < 1 or wall_s <= 0:
        raise ValueError(f"need steps >= 1 and a positive wall time, got {steps}, {wall_s}")
    wall_ms = wall_s * 1000
    result: dict[str, Any] = {"steps": steps, "wall_ms_per_step": wall_ms / steps}
    calls = sorted(host_calls(space).items(), key=lambda kv: -kv[1][0])[: 2 * top]
    result["host_top"] = [
        {"name": n[:120], "ms_per_step": t / steps, "calls_per_step": c / steps}
        for n, (t, c) in calls
    ]
    activity = device_activity(space)
    if not activity:
        result["device"] = None
        return result
    # One accelerator per run here; with several, report the busiest.
    busy = {d: _union_ps([e[1:] for e in events]) for d, events in activity.items()}
    device = max(busy, key=busy.__getitem__)
    events = activity[device]
    kernels = [e for e in events if not e[0].lower().startswith(COPY_PREFIXES)]
    copies = [e for e in events if e[0].lower().startswith(COPY_PREFIXES)]
    busy_ms = busy[device] / 1e9
    kernel_ms = sum(e[2] - e[1] for e in kernels) / 1e9
    per_name = _tally((name, (e - s) / 1e9) for name, s, e in kernels)
    ranked = sorted(per_name.items(), key=lambda kv: -kv[1][0])[:top]
    result.update(
        {
            "device": device,
            "device_busy_ms_per_step": busy_ms / steps,
            "device_busy_fraction": busy_ms / wall_ms,
            "kernels_per_step": len(kernels) / steps,
            "mean_kernel_us": kernel_ms * 1000 / len(kernels) if kernels else 0.0,
            "copies_per_step": len(copies) / steps,
            "copy_ms_per_step": sum(e[2] - e[1] for e in copies) / 1e9 / steps,
            "top_kernels": [
                {"name": n[:120], "ms_per_step": t / steps, "launches_per_step": c / steps}
                for n, (t, c) in ranked
            ],
        }
    )
    return result


def summarize_dir(folder: Path) -> dict[str, Any]:
    """Every traced run under ``folder`` (a subfolder with ``meta.json``), by its name."""
    runs: dict[str, Any] = {}
    for meta_path in sorted(folder.glob("*/meta.json")):
        run = meta_path.parent
        meta = json.loads(meta_path.read_text())
        traces = sorted(run.rglob("*.xplane.pb"))
        if not traces:
            runs[run.name] = {**meta, "error": "no .xplane.pb under this folder"}
            continue
        runs[run.name] = summarize(read_space(traces[-1]), meta["steps"], meta["wall_s"])
        if "untraced_ms_per_step" in meta:
            runs[run.name]["untraced_ms_per_step"] = meta["untraced_ms_per_step"]
    if not runs:
        raise SystemExit(f"no traced run (a folder with meta.json) under {folder}")
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("traces", type=Path, help="the folder bench.step_time --trace wrote")
    ap.add_argument("--out", type=Path, help="write the summary here (JSON)")
    args = ap.parse_args()
    runs = summarize_dir(args.traces)
    for name, r in runs.items():
        if r.get("device"):
            print(
                f"{name:16s} wall {r['wall_ms_per_step']:.3f} ms/step, device busy "
                f"{r['device_busy_ms_per_step']:.3f} ({r['device_busy_fraction']:.0%}), "
                f"{r['kernels_per_step']:.0f} kernels/step of {r['mean_kernel_us']:.1f} us"
            )
        else:
            print(f"{name:16s} wall {r['wall_ms_per_step']:.3f} ms/step, no device activity")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        command = " ".join(["python -m bench.trace_summary", *sys.argv[1:]])
        args.out.write_text(
            json.dumps({"command": command, "traces": str(args.traces), "runs": runs}, indent=1)
        )
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
