"""Plots and the self-contained HTML / Markdown / JSON / CSV report of one run.

The report puts the teacher, the distilled student and the scratch student side by side:
summary cards, a red warning box for every collapsed model, the comparison table, per-class
accuracy, training curves, over-fitting, confusion matrices, calibration, speed and size, and
the run's settings. ``report.html`` embeds its images as base64 PNG data URIs and its CSS
inline, so it opens offline from a KFP artifact, a bucket or an e-mail attachment.

Plots use matplotlib's object API with the Agg canvas (no pyplot, no global backend switch);
every file is written atomically with :mod:`kd.storage`.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import html
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kd.config import CLASS_NAMES
from kd.evaluate import DISTILLED, MODEL_NAMES, SCRATCH, TEACHER, overfitting_analysis
from kd.storage import write_bytes_atomic, write_text_atomic

MODEL_LABELS = {
    TEACHER: "Teacher",
    DISTILLED: "Distilled student",
    SCRATCH: "Scratch student",
}
MODEL_COLORS = {
    TEACHER: "#34558b",
    DISTILLED: "#e07a2f",
    SCRATCH: "#4f9d69",
}
_EXTRA_COLORS = ("#8e6bb8", "#c2504f", "#6b8e9f", "#b8a04a")
DPI = 100

#: Section ids of ``report.html``, in page order, with their headings.
SECTIONS = (
    ("summary", "Summary"),
    ("collapse-warnings", "Collapse check"),
    ("comparison", "Comparison"),
    ("per-class-accuracy", "Per-class accuracy"),
    ("training-curves", "Training curves"),
    ("overfitting", "Overfitting"),
    ("confusion-matrices", "Confusion matrices"),
    ("calibration", "Calibration"),
    ("speed-size", "Speed & size"),
    ("run-info", "Run info"),
)

_RC: dict[str, Any] = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
    "legend.fontsize": 9,
}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def ordered_names(names: Sequence[str] | Mapping[str, Any]) -> list[str]:
    """Model names in report order: teacher, distilled, scratch, then any others sorted."""
    names = list(names)
    return [n for n in MODEL_NAMES if n in names] + sorted(n for n in names if n not in MODEL_NAMES)


def _label(name: str) -> str:
    return MODEL_LABELS.get(name, name)


def _color(name: str) -> str:
    if name in MODEL_COLORS:
        return MODEL_COLORS[name]
    return _EXTRA_COLORS[sum(map(ord, name)) % len(_EXTRA_COLORS)]


def _num(value: Any) -> float | None:
    """A finite float, or None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _pct(value: Any, digits: int = 1) -> str:
    """Fraction -> ``"91.2 %"``; ``"—"`` when missing."""
    f = _num(value)
    return "—" if f is None else f"{100 * f:.{digits}f} %"


def _pts(value: Any, digits: int = 2) -> str:
    """Percentage points -> ``"+2.30 pts"``."""
    f = _num(value)
    return "—" if f is None else f"{f:+.{digits}f} pts"


def _interval_bounds(comparison: Mapping[str, Any]) -> str:
    """``"-5.9 to +2.8"`` (points; two decimals where one would round a bound to 0.0), or
    ``""`` without an interval (:func:`kd.evaluate.paired_gain_interval`)."""
    iv = comparison.get("kd_gain_interval") or {}
    low, high = _num(iv.get("low_points")), _num(iv.get("high_points"))
    if low is None or high is None:
        return ""
    digits = 2 if min(abs(low), abs(high)) < 0.05 else 1
    return f"{low:+.{digits}f} to {high:+.{digits}f}"


def _interval_text(comparison: Mapping[str, Any]) -> str:
    """``"95 % interval -5.9 to +2.8 pts on 500 test images, McNemar p = 0.47"``, or ``""``
    without one."""
    bounds = _interval_bounds(comparison)
    if not bounds:
        return ""
    iv = comparison["kd_gain_interval"]
    text = f"95 % interval {bounds} pts on {_int(iv.get('n'))} test images"
    p = _num(iv.get("mcnemar_p"))
    if p is not None:
        text += ", McNemar p < 0.001" if p < 0.001 else f", McNemar p = {p:.2g}"
    return text


def _gain_verdict(comparison: Mapping[str, Any]) -> str:
    """``"good"``, ``"bad"`` or ``"unresolved"``: the sign of the KD gain where the test images
    resolve it (its interval excludes 0 and McNemar's p < 0.05, or there is no interval), else
    unresolved."""
    gain = _num(comparison.get("kd_gain_points"))
    iv = comparison.get("kd_gain_interval") or {}
    if iv and not iv.get("resolved"):
        return "unresolved"
    return "good" if gain is not None and gain > 0 else "bad"


def _fmt(value: Any, spec: str = ".3f", suffix: str = "") -> str:
    f = _num(value)
    return "—" if f is None else f"{f:{spec}}{suffix}"


def _int(value: Any) -> str:
    f = _num(value)
    return "—" if f is None else f"{int(f):,}"


def _size(value: Any) -> str:
    """Bytes -> ``"1.23 MiB"`` / ``"456 KiB"``."""
    f = _num(value)
    if f is None:
        return "—"
    if f >= 2**20:
        return f"{f / 2**20:.2f} MiB"
    if f >= 2**10:
        return f"{f / 2**10:.0f} KiB"
    return f"{int(f)} B"


def _get(result: Mapping[str, Any], section: str, key: str) -> Any:
    sub = result.get(section) or {}
    return sub.get(key, result.get(key))


def _class_names(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    for r in results.values():
        if r.get("class_names"):
            return list(r["class_names"])
        if r.get("per_class_accuracy") is not None:
            n = len(r["per_class_accuracy"])
            return list(CLASS_NAMES) if n == len(CLASS_NAMES) else [str(i) for i in range(n)]
    return list(CLASS_NAMES)


def to_jsonable(obj: Any) -> Any:
    """Convert numpy types, paths, tuples and non-finite floats into plain JSON values.

    Non-finite floats (NaN, inf) become ``None`` so the output is strict JSON.
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating | float):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is None or isinstance(obj, str | int):
        return obj
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return to_jsonable(dataclasses.asdict(obj))
    return str(obj)


def _style(overrides: Mapping[str, Any] | None = None) -> contextlib.AbstractContextManager:
    """The report's matplotlib style (``_RC`` plus ``overrides``) as a context manager."""
    import matplotlib

    rc: Any = {**_RC, **(overrides or {})}
    return matplotlib.rc_context(rc)


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    buf = io.BytesIO()
    fig.savefig(
        buf,
        format="png",
        dpi=DPI,
        facecolor="white",
        bbox_inches="tight",
        pad_inches=0.12,
        metadata={"Software": None},
    )
    return write_bytes_atomic(path, buf.getvalue())


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", color="#888", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _epochs(history: Mapping[str, Any], n: int) -> list[float]:
    ep = history.get("epoch")
    if ep is not None and len(ep) == n:
        return [float(e) for e in ep]
    return list(range(1, n + 1))


def _curve(history: Mapping[str, Any], key: str) -> tuple[list[float], list[float]] | None:
    values = history.get(key)
    if not values:
        return None
    ys = [np.nan if v is None else float(v) for v in values]
    return _epochs(history, len(ys)), ys


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def plot_training_curves(
    histories: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str]
) -> Path:
    """Training curves of every model: accuracy, loss, distillation terms, learning rate.

    Solid lines are the training split, dashed lines the validation split (the distilled
    student's validation curve included). The distilled student's training ``loss`` is the
    total distillation loss ``alpha * CE + (1 - alpha) * T**2 * KL``, so its hard and soft terms
    (``student_loss``, ``distillation_loss``) get their own panel. Missing keys are skipped.

    Args:
        histories: model name -> history dict (``epoch`` 1-based, ``accuracy``,
            ``val_accuracy``, ``loss``, ``val_loss``, ``lr``, ...).
        path: the PNG to write.

    Returns:
        ``Path(path)``.
    """
    with _style():
        fig = _new_figure(13, 8.4)
        axes = fig.subplots(2, 2)
        ax_acc, ax_loss, ax_kd, ax_lr = axes.ravel()
        names = ordered_names(histories)
        drawn = {ax: False for ax in axes.ravel()}
        for name in names:
            h = histories[name] or {}
            c = _color(name)
            for ax, key, style, suffix in (
                (ax_acc, "accuracy", "-", "train"),
                (ax_acc, "val_accuracy", "--", "val"),
                (ax_loss, "loss", "-", "train (KD total)" if name == DISTILLED else "train"),
                (ax_loss, "val_loss", "--", "val"),
            ):
                curve = _curve(h, key)
                if curve:
                    ys = np.asarray(curve[1]) * (100 if key.endswith("accuracy") else 1)
                    ax.plot(curve[0], ys, style, color=c, lw=1.8, label=f"{_label(name)} {suffix}")
                    drawn[ax] = True
            for key, style in (("student_loss", "-"), ("distillation_loss", ":")):
                curve = _curve(h, key)
                if curve:
                    ax_kd.plot(
                        curve[0],
                        curve[1],
                        style,
                        color=c,
                        lw=1.8,
                        label=f"{_label(name)}: {key.replace('_', ' ')}",
                    )
                    drawn[ax_kd] = True
            curve = _curve(h, "lr")
            if curve and any(v > 0 for v in curve[1] if np.isfinite(v)):
                ax_lr.plot(curve[0], curve[1], color=c, lw=1.8, label=_label(name))
                drawn[ax_lr] = True
        titles = {
            ax_acc: ("Accuracy (solid = train, dashed = validation)", "accuracy (%)"),
            ax_loss: ("Loss (cross-entropy; distilled train = KD loss)", "loss"),
            ax_kd: ("Distillation loss terms (training)", "loss"),
            ax_lr: ("Learning rate", "learning rate"),
        }
        for ax, (title, ylabel) in titles.items():
            ax.set_title(title, loc="left")
            if drawn[ax]:
                ax.set_xlabel("epoch")
                ax.set_ylabel(ylabel)
                ax.legend(loc="best", ncol=2 if ax in (ax_acc, ax_loss) else 1)
            else:
                _empty(ax, "not recorded")
        if drawn[ax_lr]:
            ax_lr.set_yscale("log")
        return _save(fig, path)


def plot_confusion_matrices(
    results: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str]
) -> Path:
    """Row-normalised confusion matrices side by side, annotated in percent.

    Cell ``(i, j)`` = ``100 * count(true i, predicted j) / count(true i)``: the diagonal is the
    per-class accuracy, off-diagonal cells show where each class's errors go.

    Args:
        results: model name -> result with ``confusion_matrix`` (rows = true class).
        path: the PNG to write.

    Returns:
        ``Path(path)``.
    """
    names = [n for n in ordered_names(results) if results[n].get("confusion_matrix")]
    classes = _class_names(results)
    with _style({"axes.grid": False}):
        fig = _new_figure(4.35 * max(len(names), 1) + 0.9, 4.75)
        if not names:
            _empty(fig.subplots(), "no confusion matrix")
            return _save(fig, path)
        axes = np.atleast_1d(fig.subplots(1, len(names)))
        image = None
        for ax, name in zip(axes, names, strict=True):
            cm = np.asarray(results[name]["confusion_matrix"], dtype=np.float64)
            rows = cm.sum(axis=1, keepdims=True)
            norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
            image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
            k = norm.shape[0]
            for i in range(k):
                for j in range(k):
                    v = norm[i, j]
                    if v < 0.005:
                        continue
                    ax.text(
                        j,
                        i,
                        f"{100 * v:.0f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if v > 0.55 else "#223",
                    )
            labels = classes if len(classes) == k else [str(i) for i in range(k)]
            ax.set_xticks(range(k), labels, rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(k), labels if ax is axes[0] else [""] * k, fontsize=8)
            ax.set_xlabel("predicted class")
            if ax is axes[0]:
                ax.set_ylabel("true class")
            acc = _pct(results[name].get("accuracy"))
            ax.set_title(f"{_label(name)} — accuracy {acc}", color=_color(name))
            for spine in ax.spines.values():
                spine.set_visible(False)
        fig.colorbar(image, ax=list(axes), shrink=0.7, pad=0.01, label="fraction of the true class")
        return _save(fig, path)


def plot_per_class_accuracy(
    results: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str]
) -> Path:
    """Grouped bars: per-class test accuracy (%) of every model.

    Args:
        results: model name -> result with ``per_class_accuracy`` (fractions).
        path: the PNG to write.

    Returns:
        ``Path(path)``.
    """
    names = [n for n in ordered_names(results) if results[n].get("per_class_accuracy")]
    classes = _class_names(results)
    with _style():
        fig = _new_figure(13, 4.6)
        ax = fig.subplots()
        if not names:
            _empty(ax, "no per-class accuracy")
            return _save(fig, path)
        k = len(classes)
        width = 0.8 / len(names)
        x = np.arange(k)
        for i, name in enumerate(names):
            vals = [100 * (_num(v) or 0.0) for v in results[name]["per_class_accuracy"]][:k]
            ax.bar(
                x[: len(vals)] + (i - (len(names) - 1) / 2) * width,
                vals,
                width * 0.92,
                color=_color(name),
                label=f"{_label(name)} ({_pct(results[name].get('accuracy'))})",
            )
        ax.set_xticks(x, classes)
        ax.set_ylim(0, 105)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("Per-class test accuracy", loc="left")
        ax.grid(axis="x", visible=False)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=len(names))
        return _save(fig, path)


def plot_accuracy_vs_params(
    results: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str]
) -> Path:
    """Test accuracy (%) against parameter count (log x axis), one point per model.

    Args:
        results: model name -> result with ``accuracy`` and ``footprint.params``.
        path: the PNG to write.

    Returns:
        ``Path(path)``.
    """
    with _style():
        fig = _new_figure(6.4, 4.6)
        ax = fig.subplots()
        points = []
        for name in ordered_names(results):
            p = _num(_get(results[name], "footprint", "params"))
            a = _num(results[name].get("accuracy"))
            if p and a is not None:
                points.append((name, p, 100 * a))
        if not points:
            _empty(ax, "parameter counts not available")
            return _save(fig, path)
        for name, p, a in points:
            ax.scatter([p], [a], s=140, color=_color(name), edgecolor="white", lw=1.5, zorder=3)
            ax.annotate(
                f"{_label(name)}\n{a:.1f} %, {p / 1e6:.2f} M",
                (p, a),
                textcoords="offset points",
                xytext=(10, -4),
                fontsize=9,
                color=_color(name),
            )
        ps = [p for _, p, _ in points]
        accs = [a for _, _, a in points]
        ax.set_xscale("log")
        ax.set_xlim(min(ps) / 2.5, max(ps) * 6)
        span = max(max(accs) - min(accs), 4.0)
        ax.set_ylim(max(0.0, min(accs) - span * 0.35), min(102.0, max(accs) + span * 0.35))
        ax.set_xlabel("parameters (log scale)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("Accuracy vs model size", loc="left")
        return _save(fig, path)


def plot_reliability(
    results: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str]
) -> Path:
    """Reliability diagrams: accuracy per confidence bin against the diagonal, per model.

    Bars are the accuracy of each equal-width confidence bin; the red part above a bar is the
    gap up to the bin's mean confidence (over-confident), the hatched top of a bar the part
    above it (under-confident). A perfectly calibrated model follows the dashed diagonal. The
    title gives ECE in percent.

    Args:
        results: model name -> result with ``reliability`` and ``ece``.
        path: the PNG to write.

    Returns:
        ``Path(path)``.
    """
    names = [n for n in ordered_names(results) if results[n].get("reliability")]
    with _style():
        fig = _new_figure(4.1 * max(len(names), 1) + 0.6, 4.5)
        if not names:
            _empty(fig.subplots(), "no reliability data")
            return _save(fig, path)
        axes = np.atleast_1d(fig.subplots(1, len(names), sharey=True))
        for ax, name in zip(axes, names, strict=True):
            bins = results[name]["reliability"]
            for b in bins:
                if not b.get("count"):
                    continue
                lo, hi = float(b["lower"]), float(b["upper"])
                acc, conf = float(b["accuracy"]), float(b["confidence"])
                ax.bar(
                    lo,
                    acc,
                    hi - lo,
                    align="edge",
                    color=_color(name),
                    edgecolor="white",
                    lw=0.6,
                    zorder=2,
                )
                if conf > acc:  # over-confident: red gap above the bar
                    ax.bar(
                        lo,
                        conf - acc,
                        hi - lo,
                        bottom=acc,
                        align="edge",
                        color="#f4b4b2",
                        edgecolor="#d9534f",
                        lw=0.6,
                        zorder=2,
                    )
                else:  # under-confident: hatched part of the bar above the confidence
                    ax.bar(
                        lo,
                        acc - conf,
                        hi - lo,
                        bottom=conf,
                        align="edge",
                        color="none",
                        hatch="///",
                        edgecolor="white",
                        lw=0,
                        zorder=2.5,
                    )
            ax.plot([0, 1], [0, 1], "--", color="#555", lw=1, zorder=3)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_xlabel("confidence (max softmax)")
            if ax is axes[0]:
                ax.set_ylabel("accuracy")
            ax.set_title(
                f"{_label(name)} — ECE {_pct(results[name].get('ece'))}", color=_color(name)
            )
        return _save(fig, path)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _table_rows(
    results: Mapping[str, Mapping[str, Any]], comparison: Mapping[str, Any]
) -> list[dict[str, str]]:
    gaps = comparison.get("accuracy_gap_to_teacher_points") or {}
    agree = comparison.get("agreement_with_teacher") or {}
    rows = []
    for name in ordered_names(results):
        r = results[name]
        collapse = r.get("collapse") or {}
        rows.append(
            {
                "Model": name,
                "Accuracy": _pct(r.get("accuracy"), 2),
                "Loss": _fmt(r.get("loss")),
                "ECE": _pct(r.get("ece")),
                "Params": _int(_get(r, "footprint", "params")),
                "Size": _size(_get(r, "footprint", "size_bytes")),
                "Gap to teacher": "—" if name == TEACHER else _pts(gaps.get(name)),
                "Agreement": "—" if name == TEACHER else _pct(agree.get(name)),
                "Collapsed": "YES" if collapse.get("collapsed") else "no",
            }
        )
    return rows


def summary_table(results: Mapping[str, Mapping[str, Any]], comparison: Mapping[str, Any]) -> str:
    """A Markdown table of the models, aligned so it also reads as plain text.

    Columns: accuracy (%), loss (mean cross-entropy, nats), ECE (%), parameters, size on disk,
    gap to the teacher (percentage points), agreement with the teacher (% of test images),
    collapsed. Below the table: KD gain (points, with its 95 % interval and McNemar's p where
    the comparison has them, and "not resolved" when those images cannot tell it from zero),
    relative error reduction, compression ratio, and one ``WARNING`` line per collapsed model.

    Args:
        results: model name -> :func:`kd.evaluate.evaluate_model` result.
        comparison: :func:`kd.evaluate.compare_models` of ``results``.

    Returns:
        The table and the lines below it, newline-terminated.
    """
    rows = _table_rows(results, comparison)
    cols = list(rows[0]) if rows else ["Model", "Accuracy"]
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in cols}
    left = {"Model", "Collapsed"}

    def cell(c: str, text: str) -> str:
        return text.ljust(widths[c]) if c in left else text.rjust(widths[c])

    lines = ["| " + " | ".join(c.ljust(widths[c]) for c in cols) + " |"]
    lines.append(
        "|"
        + "|".join(
            ("-" * (widths[c] + 1) + ":") if c not in left else (":" + "-" * (widths[c] + 1))
            for c in cols
        )
        + "|"
    )
    lines += ["| " + " | ".join(cell(c, r[c]) for c in cols) + " |" for r in rows]
    lines.append("")
    rer = _num(comparison.get("relative_error_reduction"))
    cr = _num(comparison.get("compression_ratio"))
    interval = _interval_text(comparison)
    if interval:
        resolved = _gain_verdict(comparison) != "unresolved"
        interval = f" ({interval}{'' if resolved else ': not resolved on these test images'})"
    lines.append(
        f"KD gain (distilled - scratch): {_pts(comparison.get('kd_gain_points'))}{interval}; "
        f"relative error reduction: {'—' if rer is None else f'{100 * rer:.1f} %'}; "
        f"compression (teacher / distilled params): {'—' if cr is None else f'{cr:.1f}x'}"
    )
    for name in ordered_names(results):
        c = results[name].get("collapse") or {}
        if c.get("collapsed"):
            lines.append(f"WARNING: {name} collapsed: {c.get('reason', '')}")
    return "\n".join(lines) + "\n"


def metrics_frame(results: Mapping[str, Mapping[str, Any]]) -> Any:
    """One pandas row per model: headline metrics plus ``acc_<class>`` per-class columns.

    Args:
        results: model name -> result.

    Returns:
        A ``pandas.DataFrame`` with columns ``model, accuracy, loss, ece, macro_f1, params,
        size_bytes, latency_p50_ms, latency_p95_ms, throughput_ips, collapsed, top3_share,
        acc_<class>...`` (accuracies as fractions, latency in ms, throughput in images/s).
    """
    import pandas as pd

    classes = _class_names(results)
    records = []
    for name in ordered_names(results):
        r = results[name]
        collapse = r.get("collapse") or {}
        row: dict[str, Any] = {
            "model": name,
            "accuracy": _num(r.get("accuracy")),
            "loss": _num(r.get("loss")),
            "ece": _num(r.get("ece")),
            "macro_f1": _num(r.get("macro_f1")),
            "params": _num(_get(r, "footprint", "params")),
            "size_bytes": _num(_get(r, "footprint", "size_bytes")),
            "latency_p50_ms": _num(_get(r, "speed", "latency_p50_ms")),
            "latency_p95_ms": _num(_get(r, "speed", "latency_p95_ms")),
            "throughput_ips": _num(_get(r, "speed", "throughput_ips")),
            "collapsed": bool(collapse.get("collapsed", False)),
            "top3_share": _num(collapse.get("top3_share")),
        }
        per_class = r.get("per_class_accuracy") or [None] * len(classes)
        for cls, v in zip(classes, per_class, strict=False):
            row[f"acc_{cls}"] = _num(v)
        records.append(row)
    frame = pd.DataFrame.from_records(records)
    for col in ("params", "size_bytes"):
        if col in frame:
            frame[col] = frame[col].astype("Int64")
    return frame


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

_CSS = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; --bg:#f5f7fa; --card:#fff;
  --good:#2f855a; --bad:#c53030; --unresolved:#975a16; --accent:#34558b; }
* { box-sizing:border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
  font:15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background:linear-gradient(120deg,#22385e,#34558b 60%,#4a6fa5); color:#fff;
  padding:28px 0 0; }
header .wrap { padding-bottom:0; }
header h1 { margin:0 0 4px; font-size:28px; font-weight:700; letter-spacing:-.01em; }
header p { margin:0 0 18px; opacity:.85; }
nav { display:flex; flex-wrap:wrap; gap:4px; }
nav a { color:#fff; text-decoration:none; font-size:13px; padding:7px 11px;
  border-radius:6px 6px 0 0; background:rgba(255,255,255,.12); }
nav a:hover { background:rgba(255,255,255,.25); }
.wrap { max-width:1200px; margin:0 auto; padding:0 28px; }
main.wrap { padding-top:22px; padding-bottom:40px; }
section { background:var(--card); border:1px solid var(--line); border-radius:12px;
  padding:20px 24px; margin:0 0 20px; box-shadow:0 1px 2px rgba(16,24,40,.05); }
h2 { margin:0 0 14px; font-size:20px; }
h2 .n { color:var(--muted); font-weight:400; margin-right:6px; }
p.lead { font-size:17px; margin:0 0 16px; }
p.note, figcaption { color:var(--muted); font-size:13px; margin:8px 0 0; }
.cards { display:grid; grid-template-columns:repeat(auto-fit,minmax(170px,1fr)); gap:12px; }
.card { border:1px solid var(--line); border-radius:10px; padding:12px 14px;
  border-top:4px solid var(--c,#9aa5b1); }
.card .k { font-size:12px; text-transform:uppercase; letter-spacing:.05em; color:var(--muted); }
.card .v { font-size:28px; font-weight:700; line-height:1.2; margin:2px 0; }
.card .s { font-size:13px; color:var(--muted); }
.good { color:var(--good); } .bad { color:var(--bad); } .unresolved { color:var(--unresolved); }
.warning { background:#fff5f5; border:2px solid var(--bad); border-left-width:8px;
  border-radius:8px; padding:12px 16px; margin:0 0 10px; color:#742a2a; }
.warning strong { color:var(--bad); font-size:16px; }
.predbars { display:flex; gap:6px; align-items:flex-end; margin-top:10px; }
.pb { display:flex; flex-direction:column; align-items:center; width:74px; font-size:11px; }
.pb .bar { width:28px; background:var(--bad); border-radius:3px 3px 0 0; opacity:.75; }
.pb .pv { color:#742a2a; margin-bottom:2px; } .pb .pl { color:var(--muted); margin-top:3px; }
.ok { background:#f0fff4; border:1px solid #9ae6b4; border-left:8px solid var(--good);
  border-radius:8px; padding:12px 16px; color:#22543d; }
table { border-collapse:collapse; width:100%; font-size:14px; }
th, td { padding:7px 10px; border-bottom:1px solid var(--line); text-align:right;
  white-space:nowrap; }
th { background:#f8fafc; color:var(--muted); font-weight:600; font-size:12px;
  text-transform:uppercase; letter-spacing:.03em; }
td:first-child, th:first-child { text-align:left; }
tbody tr:hover { background:#fafbfc; }
.dot { display:inline-block; width:10px; height:10px; border-radius:50%; margin-right:7px;
  vertical-align:baseline; }
.tag { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px;
  font-weight:600; }
.tag.bad { background:#fed7d7; color:var(--bad); } .tag.good { background:#c6f6d5; color:#22543d; }
.scroll { overflow-x:auto; }
.heat { display:inline-block; min-width:66px; padding:1px 8px; border-radius:6px; }
figure { margin:6px 0 0; }
figure img { width:100%; height:auto; border-radius:6px; display:block; }
.narrow { max-width:720px; margin:14px auto 0; }
.two { display:grid; grid-template-columns:minmax(0,1fr) minmax(0,1fr); gap:20px;
  align-items:start; }
.kv td, .kv th { text-align:left; white-space:normal; } .kv td:first-child { color:var(--muted);
  width:34%; font-family:ui-monospace, Menlo, Consolas, monospace; font-size:13px; }
footer { color:var(--muted); font-size:12px; text-align:center; padding:0 0 30px; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _model_cell(name: str) -> str:
    return f'<span class="dot" style="background:{_color(name)}"></span>{_e(_label(name))}'


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _figure(path: Path, alt: str, caption: str) -> str:
    return f"<figure>{_img(path, alt)}<figcaption>{_e(caption)}</figcaption></figure>"


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return (
        f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _heat(value: float | None) -> str:
    """Inline style shading an accuracy cell: red (0 %) -> amber -> green (100 %)."""
    if value is None:
        return ""
    hue = int(max(0.0, min(1.0, value)) * 120)
    return f' style="background:hsl({hue},70%,88%)"'


def _section(idx: int, sid: str, heading: str, body: str) -> str:
    return (
        f'<section id="{sid}"><h2><span class="n">{idx}.</span>{_e(heading)}</h2>{body}</section>'
    )


def _headline(results: Mapping[str, Mapping[str, Any]], comparison: Mapping[str, Any]) -> str:
    gain = _num(comparison.get("kd_gain_points"))
    if gain is None:
        return "Both students are needed to measure the gain of knowledge distillation."
    rer = _num(comparison.get("relative_error_reduction"))
    verdict = _gain_verdict(comparison)
    accs = (
        f"{_pct(results[DISTILLED].get('accuracy'))} vs {_pct(results[SCRATCH].get('accuracy'))}"
        " from scratch"
    )
    interval = _interval_text(comparison)
    if verdict == "unresolved":
        iv = comparison["kd_gain_interval"]
        parts = [
            f"Knowledge distillation changed the student by <strong>{_pts(gain)}</strong> of "
            f"test accuracy ({accs}), which these <strong>{_int(iv.get('n'))} test images "
            f'cannot tell from zero</strong> (<span class="unresolved">{_e(interval)}</span>; '
            "more test images would narrow it)"
        ]
    else:
        verb = "improved" if gain > 0 else "did not improve"
        parts = [
            f'Knowledge distillation <strong class="{verdict}">{verb}</strong> the student by '
            f"<strong>{_pts(gain)}</strong> of test accuracy ({accs}"
        ]
        if rer is not None:
            parts.append(f", removing {100 * rer:.1f} % of the scratch student's errors")
        if interval:
            parts.append(f"; {_e(interval)}")
        parts.append(")")
    cr = _num(comparison.get("compression_ratio"))
    gap = _num((comparison.get("accuracy_gap_to_teacher_points") or {}).get(DISTILLED))
    if cr is not None and gap is not None:
        parts.append(
            f". The distilled student is <strong>{cr:.1f}&times; smaller</strong> than the "
            f"teacher and {abs(gap):.2f} points {'below' if gap >= 0 else 'above'} it"
        )
    parts.append(".")
    collapsed = [
        n
        for n in (DISTILLED, SCRATCH)
        if (results.get(n, {}).get("collapse") or {}).get("collapsed")
    ]
    if collapsed:
        who = " and the ".join(_label(n).lower() for n in collapsed)
        parts.append(
            f' <strong class="bad">Caution: the {_e(who)} collapsed</strong>, so this gain '
            "does not measure what distillation does (see the collapse check below)."
        )
    return "".join(parts)


def teacher_text(teacher: Mapping[str, Any] | None) -> str:
    """One sentence on where the teacher came from (source, file, size, what it trained on)."""
    if not teacher:
        return ""
    arch = teacher.get("architecture") or teacher.get("preset") or "a model"
    params = teacher.get("parameters")
    size = f", {int(params):,} parameters" if params else ""
    sha = (teacher.get("sha256") or "")[:12]
    if teacher.get("source") == "imported":
        text = (
            f"Teacher: brought in, not trained in this run: {arch}{size}, from {teacher.get('uri')}"
        )
        text += f" (sha256 {sha}…)" if sha else ""
        if teacher.get("trained_on"):
            text += (
                f"; trained on {teacher['trained_on']}, while the students saw only this "
                "run's training split (so its validation accuracy here is not held out)"
            )
    else:
        text = f"Teacher: trained in this run on its training split: {arch}{size}"
    if teacher.get("test_accuracy") is not None:
        text += f"; test accuracy here {_pct(teacher['test_accuracy'], 2)}"
    return text + "."


def gate_text(gate: Mapping[str, Any] | None) -> str:
    """The gate's decision, its thresholds and the condition that decided, in one line."""
    if not gate:
        return ""
    va = gate.get("val_accuracy") or {}
    verdict = "passed" if gate.get("passed") else "FAILED"
    return (
        f"Quality gate {verdict} (decided on the validation split, never the test set): "
        f"requires no collapsed model, a validation KD gain >= {gate.get('min_kd_gain')} "
        f"points and a distilled validation accuracy >= {gate.get('min_accuracy')}; measured "
        f"KD gain {_pts(gate.get('val_kd_gain_points'))}, distilled "
        f"{_pct(va.get(DISTILLED), 2)}, scratch {_pct(va.get(SCRATCH), 2)}. "
        f"Decided by: {gate.get('deciding')}."
    )


def _summary_html(
    results: Mapping[str, Mapping[str, Any]],
    comparison: Mapping[str, Any],
    teacher: Mapping[str, Any] | None = None,
    gate: Mapping[str, Any] | None = None,
) -> str:
    cards = []
    for name in ordered_names(results):
        r = results[name]
        collapsed = (r.get("collapse") or {}).get("collapsed")
        sub = f"{_int(_get(r, 'footprint', 'params'))} params · ECE {_pct(r.get('ece'))}"
        if collapsed:
            sub += ' · <span class="tag bad">collapsed</span>'
        cards.append(
            f'<div class="card" style="--c:{_color(name)}"><div class="k">{_e(_label(name))}'
            f'</div><div class="v">{_pct(r.get("accuracy"))}</div><div class="s">{sub}</div></div>'
        )
    gain = _num(comparison.get("kd_gain_points"))
    if gain is not None:
        rer = _num(comparison.get("relative_error_reduction"))
        cls = _gain_verdict(comparison)
        rer_text = "—" if rer is None else f"{100 * rer:.1f} %"
        sub = f"relative error reduction {rer_text}"
        bounds = _interval_bounds(comparison)
        if bounds:
            sub += f" · 95 % interval {bounds}" + (" (not resolved)" if cls == "unresolved" else "")
        if any(
            (results.get(n, {}).get("collapse") or {}).get("collapsed")
            for n in (DISTILLED, SCRATCH)
        ):
            sub += ' · <span class="tag bad">a student collapsed</span>'
        cards.append(
            f'<div class="card" style="--c:var(--{cls})"><div class="k">KD gain</div>'
            f'<div class="v {cls}">{_pts(gain)}</div><div class="s">{sub}</div></div>'
        )
    cr = _num(comparison.get("compression_ratio"))
    if cr is not None:
        cards.append(
            '<div class="card"><div class="k">Compression</div>'
            f'<div class="v">{cr:.1f}&times;</div><div class="s">teacher / distilled params</div>'
            "</div>"
        )
    agree = _num((comparison.get("agreement_with_teacher") or {}).get(DISTILLED))
    if agree is not None:
        cards.append(
            '<div class="card"><div class="k">Agreement</div>'
            f'<div class="v">{_pct(agree)}</div><div class="s">distilled = teacher prediction'
            "</div></div>"
        )
    lead = f'<p class="lead">{_headline(results, comparison)}</p>'
    for line in (teacher_text(teacher), gate_text(gate)):
        if line:
            lead += f"<p>{_e(line)}</p>"
    return f'{lead}<div class="cards">{"".join(cards)}</div>'


def _prediction_bars(result: Mapping[str, Any]) -> str:
    """A small CSS bar chart of how often each class is predicted (no image needed)."""
    counts = result.get("predicted_class_counts")
    if not counts or not sum(counts):
        return ""
    names = result.get("class_names") or [str(i) for i in range(len(counts))]
    total, top = sum(counts), max(counts)
    bars = []
    for cls, n in zip(names, counts, strict=False):
        h = max(2.0, 56.0 * n / top) if n else 0.0
        bars.append(
            f'<div class="pb"><span class="pv">{100 * n / total:.0f}%</span>'
            f'<div class="bar" style="height:{h:.0f}px"></div><span class="pl">{_e(cls)}</span>'
            "</div>"
        )
    return f'<div class="predbars" title="share of predictions per class">{"".join(bars)}</div>'


def _collapse_html(results: Mapping[str, Mapping[str, Any]]) -> str:
    boxes = []
    for name in ordered_names(results):
        c = results[name].get("collapse") or {}
        if not c.get("collapsed"):
            continue
        boxes.append(
            f'<div class="warning collapse-warning" data-model="{_e(name)}" role="alert">'
            f"<strong>&#9888; {_e(_label(name))} ({_e(name)}) has collapsed.</strong><br>"
            f"{_e(c.get('reason', ''))}.<br>Its accuracy and KD comparisons are not "
            "meaningful: check the learning rate, gradient clipping and the training curves."
            f"{_prediction_bars(results[name])}</div>"
        )
    if not boxes:
        return (
            '<div class="ok">&#10003; No model collapsed: every model spreads its '
            "predictions over the classes (top-3 share within the limit, no missing class)."
            "</div>"
        )
    rows = []
    for name in ordered_names(results):
        c = results[name].get("collapse") or {}
        missing = c.get("rare_classes") or c.get("never_predicted") or []
        rows.append(
            [
                _model_cell(name),
                _pct(c.get("top3_share")),
                _e(", ".join(missing) or "—"),
                '<span class="tag bad">collapsed</span>'
                if c.get("collapsed")
                else '<span class="tag good">ok</span>',
            ]
        )
    return "".join(boxes) + _html_table(
        ["Model", "Top-3 share", "(Almost) never predicted", "Status"], rows
    )


def _comparison_html(
    results: Mapping[str, Mapping[str, Any]], comparison: Mapping[str, Any]
) -> str:
    gaps = comparison.get("accuracy_gap_to_teacher_points") or {}
    agree = comparison.get("agreement_with_teacher") or {}
    ratios = comparison.get("compression_ratios") or {}
    accs = {n: _num(r.get("accuracy")) for n, r in results.items()}
    best = max((a for a in accs.values() if a is not None), default=None)
    rows = []
    for name in ordered_names(results):
        r = results[name]
        acc = _pct(r.get("accuracy"), 2)
        if best is not None and accs[name] == best:
            acc = f"<strong>{acc}</strong>"
        collapsed = (r.get("collapse") or {}).get("collapsed")
        ratio = _num(ratios.get(name))
        rows.append(
            [
                _model_cell(name),
                acc,
                _fmt(r.get("loss")),
                _pct(r.get("macro_f1")),
                _pct(r.get("ece")),
                _int(_get(r, "footprint", "params")),
                "—" if ratio is None else f"{ratio:.1f}&times;",
                "—" if name == TEACHER else _pts(gaps.get(name)),
                "—" if name == TEACHER else _pct(agree.get(name)),
                '<span class="tag bad">collapsed</span>'
                if collapsed
                else '<span class="tag good">ok</span>',
            ]
        )
    table = _html_table(
        [
            "Model",
            "Accuracy",
            "Loss",
            "Macro F1",
            "ECE",
            "Params",
            "Compression",
            "Gap to teacher",
            "Agreement",
            "Status",
        ],
        rows,
    )
    return table + (
        '<p class="note">Accuracy on the test split. Loss: mean cross-entropy (nats). ECE: '
        "expected calibration error. Gap to teacher in percentage points (positive = below the "
        "teacher). Agreement: share of test images where the student predicts the teacher's "
        "class.</p>"
    )


def _per_class_html(results: Mapping[str, Mapping[str, Any]], png: Path) -> str:
    names = [n for n in ordered_names(results) if results[n].get("per_class_accuracy")]
    classes = _class_names(results)
    both = DISTILLED in names and SCRATCH in names
    headers = ["Class"] + [_label(n) for n in names] + (["KD − scratch"] if both else [])
    rows = []
    for i, cls in enumerate(classes):
        row = [_e(cls)]
        vals = {}
        for n in names:
            pcs = results[n]["per_class_accuracy"]
            v = _num(pcs[i]) if i < len(pcs) else None
            vals[n] = v
            row.append(f'<span{_heat(v)} class="heat">{_pct(v)}</span>' if v is not None else "—")
        if both:
            d, s = vals[DISTILLED], vals[SCRATCH]
            if d is None or s is None:
                row.append("—")
            else:
                diff = 100 * (d - s)
                row.append(
                    f'<span class="{"good" if diff > 0 else "bad" if diff < 0 else ""}">'
                    f"{diff:+.1f} pts</span>"
                )
        rows.append(row)
    table = _html_table(headers, rows, "perclass")
    fig = _figure(png, "per-class accuracy bars", "Per-class test accuracy of every model.")
    return table + fig


def _overfitting_html(histories: Mapping[str, Mapping[str, Any]]) -> str:
    names = ordered_names(histories)
    if not names:
        return '<p class="note">No training history was given.</p>'
    rows = []
    for name in names:
        h = histories[name] or {}
        o = overfitting_analysis(h)
        times = [t for t in (_num(v) for v in h.get("epoch_time_s") or []) if t is not None]
        gap = _num(o["final_gap_points"])
        gap_cls = "bad" if gap is not None and gap > 10 else ""
        rows.append(
            [
                _model_cell(name),
                _int(o["epochs_run"]),
                _int(o["best_epoch"]),
                _pct(o["best_val_accuracy"]),
                _pct(o["final_train_accuracy"]),
                _pct(o["final_val_accuracy"]),
                f'<span class="{gap_cls}">{_pts(gap, 1)}</span>',
                _pts(o["gap_at_best_points"], 1),
                f"{sum(times) / 60:.1f} min" if times else "—",
            ]
        )
    table = _html_table(
        [
            "Model",
            "Epochs",
            "Best epoch",
            "Best val acc",
            "Final train acc",
            "Final val acc",
            "Final gap",
            "Gap at best",
            "Train time",
        ],
        rows,
    )
    return table + (
        '<p class="note">Gap = train accuracy − validation accuracy, in percentage points '
        "(large positive = overfitting; red above 10 points). Train accuracy is measured with "
        "augmentation and, for the distilled student, under the distillation objective.</p>"
    )


def _speed_html(results: Mapping[str, Mapping[str, Any]], png: Path) -> str:
    rows = []
    machine = None
    for name in ordered_names(results):
        r = results[name]
        speed = r.get("speed") or {}
        machine = machine or speed.get("machine")
        rows.append(
            [
                _model_cell(name),
                _int(_get(r, "footprint", "params")),
                _size(_get(r, "footprint", "size_bytes")),
                _fmt(speed.get("latency_p50_ms"), ".2f", " ms"),
                _fmt(speed.get("latency_p95_ms"), ".2f", " ms"),
                _fmt(speed.get("throughput_ips"), ",.0f", " img/s"),
            ]
        )
    table = _html_table(
        ["Model", "Params", "Size on disk", "Latency p50", "Latency p95", "Throughput"], rows
    )
    note = (
        '<p class="note">Latency: one image per call (batch 1), after warm-up. Throughput: '
        "images per second at the configured batch size.</p>"
    )
    if machine:
        parts = [
            f"{k}: {machine.get(k)}"
            for k in ("node", "processor", "cpu_count", "keras_backend")
            if k in machine
        ]
        parts.append(f"GPU: {machine['gpu']}" if machine.get("gpu") else "no GPU")
        note += f'<p class="note">Measured on {_e(" · ".join(parts))}.</p>'
    fig = _figure(
        png,
        "accuracy versus parameters",
        "Test accuracy against parameter count (log scale): up and left is better.",
    )
    return f'{table}{note}<div class="narrow">{fig}</div>'


def _calibration_html(results: Mapping[str, Mapping[str, Any]], png: Path) -> str:
    rows = []
    for name in ordered_names(results):
        r = results[name]
        acc, conf = _num(r.get("accuracy")), _num(r.get("mean_confidence"))
        over = None if acc is None or conf is None else 100 * (conf - acc)
        rows.append(
            [_model_cell(name), _pct(r.get("ece"), 2), _pct(conf), _pct(acc), _pts(over, 1)]
        )
    table = _html_table(["Model", "ECE", "Mean confidence", "Accuracy", "Over-confidence"], rows)
    fig = _figure(
        png,
        "reliability diagrams",
        "Reliability diagrams: bars = accuracy per confidence bin; red above a bar = "
        "over-confident (confidence higher than accuracy), hatched top of a bar = "
        "under-confident. Dashed diagonal = perfect calibration.",
    )
    return fig + table


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, Mapping):
        out: list[tuple[str, Any]] = []
        for k, v in value.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return [(prefix, value)]


def _run_info_html(run_info: Mapping[str, Any] | None, generated: str) -> str:
    items = _flatten(to_jsonable(run_info or {}))
    items.append(("report.generated_at", generated))
    rows = [[_e(k), _e(v if isinstance(v, str) else json.dumps(v))] for k, v in items]
    return _html_table(["Setting", "Value"], rows, "kv")


def _render_html(
    title: str,
    results: Mapping[str, Mapping[str, Any]],
    histories: Mapping[str, Mapping[str, Any]],
    comparison: Mapping[str, Any],
    run_info: Mapping[str, Any] | None,
    pngs: Mapping[str, Path],
    generated: str,
    teacher: Mapping[str, Any] | None = None,
    gate: Mapping[str, Any] | None = None,
) -> str:
    n_test = next((r.get("num_examples") for r in results.values() if r.get("num_examples")), None)
    subtitle = f"{len(results)} models"
    if n_test:
        subtitle += f" · {int(n_test):,} test images"
    subtitle += f" · generated {generated}"
    bodies = {
        "summary": _summary_html(results, comparison, teacher, gate),
        "collapse-warnings": _collapse_html(results),
        "comparison": _comparison_html(results, comparison),
        "per-class-accuracy": _per_class_html(results, pngs["per_class_accuracy"]),
        "training-curves": _figure(
            pngs["training_curves"],
            "training curves",
            "Solid = training split, dashed = validation split; colours as in the tables.",
        ),
        "overfitting": _overfitting_html(histories),
        "confusion-matrices": _figure(
            pngs["confusion_matrices"],
            "confusion matrices",
            "Rows = true class, columns = predicted class; each row sums to 100 %. The "
            "diagonal is the per-class accuracy.",
        ),
        "calibration": _calibration_html(results, pngs["reliability"]),
        "speed-size": _speed_html(results, pngs["accuracy_vs_params"]),
        "run-info": _run_info_html(run_info, generated),
    }
    nav = "".join(f'<a href="#{sid}">{_e(h)}</a>' for sid, h in SECTIONS)
    sections = "".join(
        _section(i, sid, heading, bodies[sid]) for i, (sid, heading) in enumerate(SECTIONS, 1)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f'<header><div class="wrap"><h1>{_e(title)}</h1><p>{_e(subtitle)}</p>'
        f"<nav>{nav}</nav></div></header>"
        f'<main class="wrap">{sections}</main>'
        "<footer>kd-pipeline report · self-contained: no external resources</footer>"
        "</body></html>\n"
    )


def _markdown(
    title: str,
    results: Mapping[str, Mapping[str, Any]],
    histories: Mapping[str, Mapping[str, Any]],
    comparison: Mapping[str, Any],
    generated: str,
    teacher: Mapping[str, Any] | None = None,
    gate: Mapping[str, Any] | None = None,
) -> str:
    lines = [f"# {title}", "", f"Generated {generated}.", "", "## Comparison", ""]
    lines.append(summary_table(results, comparison))
    for line in (teacher_text(teacher), gate_text(gate)):
        if line:
            lines += [line, ""]
    lines += ["## Collapse check", ""]
    collapsed = [
        n for n in ordered_names(results) if (results[n].get("collapse") or {}).get("collapsed")
    ]
    if collapsed:
        for n in collapsed:
            lines.append(f"> **WARNING: {n} has collapsed** — {results[n]['collapse']['reason']}")
            lines.append("")
    else:
        lines += ["No model collapsed.", ""]
    if histories:
        lines += [
            "## Overfitting",
            "",
            "| Model | Best epoch | Best val acc | Final gap |",
            "|:--|--:|--:|--:|",
        ]
        for n in ordered_names(histories):
            o = overfitting_analysis(histories[n] or {})
            lines.append(
                f"| {n} | {_int(o['best_epoch'])} | {_pct(o['best_val_accuracy'])} | "
                f"{_pts(o['final_gap_points'], 1)} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_report(
    out_dir: str | os.PathLike[str],
    results: dict[str, dict],
    histories: dict[str, dict],
    comparison: dict,
    *,
    title: str = "Knowledge distillation on CIFAR-10",
    run_info: dict | None = None,
    teacher: dict | None = None,
    gate: dict | None = None,
) -> dict[str, Path]:
    """Write the full report of one run into ``out_dir``.

    Files: ``report.html`` (self-contained), ``summary.md``, ``metrics.json`` (everything:
    results, comparison, overfitting, histories, run info), ``metrics.csv`` (one row per
    model, see :func:`metrics_frame`) and the PNGs ``training_curves.png``,
    ``confusion_matrices.png``, ``per_class_accuracy.png``, ``accuracy_vs_params.png``,
    ``reliability.png``. Every file is written atomically.

    Args:
        out_dir: output folder (created if missing).
        results: model name -> :func:`kd.evaluate.evaluate_model` result.
        histories: model name -> training history (dict of per-epoch lists); may be empty.
        comparison: :func:`kd.evaluate.compare_models` of ``results``.
        title: the report's title.
        run_info: settings and provenance to list in the *Run info* section (nested dicts are
            flattened to dotted keys).
        teacher: the teacher's identity (:func:`kd.teacher.teacher_identity` plus its
            ``test_accuracy``), stated in the summary.
        gate: the gate's detail (:func:`kd.stages.gate_decision`), stated in the summary.

    Returns:
        Name -> path: ``report_html``, ``summary_md``, ``metrics_json``, ``metrics_csv`` and
        one entry per plot (``training_curves``, ``confusion_matrices``,
        ``per_class_accuracy``, ``accuracy_vs_params``, ``reliability``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    histories = histories or {}
    generated = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    paths: dict[str, Path] = {
        "training_curves": plot_training_curves(histories, out / "training_curves.png"),
        "confusion_matrices": plot_confusion_matrices(results, out / "confusion_matrices.png"),
        "per_class_accuracy": plot_per_class_accuracy(results, out / "per_class_accuracy.png"),
        "accuracy_vs_params": plot_accuracy_vs_params(results, out / "accuracy_vs_params.png"),
        "reliability": plot_reliability(results, out / "reliability.png"),
    }
    page = _render_html(
        title, results, histories, comparison, run_info, paths, generated, teacher, gate
    )
    paths["report_html"] = write_text_atomic(out / "report.html", page)
    paths["summary_md"] = write_text_atomic(
        out / "summary.md",
        _markdown(title, results, histories, comparison, generated, teacher, gate),
    )
    payload = to_jsonable(
        {
            "title": title,
            "generated_at": generated,
            "models": ordered_names(results),
            "results": results,
            "comparison": comparison,
            "overfitting": {n: overfitting_analysis(h or {}) for n, h in histories.items()},
            "histories": histories,
            "run_info": run_info or {},
            "teacher": teacher or {},
            "gate": gate or {},
        }
    )
    paths["metrics_json"] = write_text_atomic(
        out / "metrics.json", json.dumps(payload, indent=2, allow_nan=False) + "\n"
    )
    paths["metrics_csv"] = write_text_atomic(
        out / "metrics.csv", metrics_frame(results).to_csv(index=False)
    )
    return paths
