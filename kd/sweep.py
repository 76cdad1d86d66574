"""Temperature x alpha (x loss) sweep: pick the best distilled student by validation accuracy.

The sweep pipeline distills one student per grid point (T, alpha, and the distillation loss
with its weights) on its own node, then this module chooses among them by **validation**
accuracy (the best epoch's, recorded by training), never by test accuracy, so the test set
stays an unbiased estimate. Only the chosen student is evaluated on the test set. The heatmap
shows validation accuracy over T (one row per loss and T when the grid has several losses)
and alpha.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from kd.config import loss_label
from kd.errors import ArtifactError
from kd.model_folder import INFO_FILE
from kd.storage import atomic_path, write_text_atomic


def grid_points(temperatures: list[float], alphas: list[float]) -> list[dict[str, float]]:
    """The full grid as a list of ``{"temperature": T, "alpha": a}`` (ParallelFor items)."""
    return [{"temperature": float(t), "alpha": float(a)} for t in temperatures for a in alphas]


def read_candidates(model_dirs: list[str]) -> list[dict[str, Any]]:
    """``info.json`` of each distilled student: its T, alpha, loss (:func:`kd.config.loss_label`)
    and best validation accuracy."""
    out = []
    for d in model_dirs:
        info_path = Path(d) / INFO_FILE
        if not info_path.exists():
            raise ArtifactError(f"{d} has no {INFO_FILE}. Fix: pass Models from distill_student")
        info = json.loads(info_path.read_text())
        cfg = info.get("config", {})
        if "temperature" not in cfg or info.get("best_val_accuracy") is None:
            raise ArtifactError(
                f"{d} is not a distilled student with a validation history. "
                "Fix: pass Models from distill_student"
            )
        out.append(
            {
                "dir": str(d),
                "temperature": float(cfg["temperature"]),
                "alpha": float(cfg["alpha"]),
                "loss": loss_label(cfg),
                "val_accuracy": float(info["best_val_accuracy"]),
            }
        )
    if not out:
        raise ArtifactError("the sweep produced no students. Fix: give a non-empty grid")
    return out


def choose(candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """The candidate with the best validation accuracy (ties: lower T, then lower alpha, then
    the loss's name)."""
    return sorted(
        candidates,
        key=lambda c: (-c["val_accuracy"], c["temperature"], c["alpha"], c.get("loss", "")),
    )[0]


def _row(c: dict[str, Any]) -> tuple[str, float]:
    return (c.get("loss", "hinton"), c["temperature"])


def _order(c: dict[str, Any]) -> tuple[str, float, float]:
    return (c.get("loss", "hinton"), c["temperature"], c["alpha"])


def plot_heatmap(candidates: list[dict[str, Any]], chosen: dict[str, Any], path: Path) -> Path:
    """Validation accuracy (%) over temperature (rows; loss and temperature when the grid has
    several losses) and alpha (columns), chosen cell boxed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    temps = sorted({_row(c) for c in candidates})
    alphas = sorted({c["alpha"] for c in candidates})
    grid = np.full((len(temps), len(alphas)), np.nan)
    for c in candidates:
        grid[temps.index(_row(c)), alphas.index(c["alpha"])] = 100 * c["val_accuracy"]
    several = len({loss for loss, _ in temps}) > 1
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(alphas), 1.2 + 0.9 * len(temps)))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    for i in range(len(temps)):
        for j in range(len(alphas)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", color="white")
    ci, cj = temps.index(_row(chosen)), alphas.index(chosen["alpha"])
    ax.add_patch(plt.Rectangle((cj - 0.5, ci - 0.5), 1, 1, fill=False, ec="red", lw=3))
    ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_yticks(
        range(len(temps)), [f"{loss}, T={t:g}" if several else f"{t:g}" for loss, t in temps]
    )
    ax.set_xlabel("alpha (weight of the hard-label loss)")
    ax.set_ylabel("loss, temperature T" if several else "temperature T")
    ax.set_title("Distilled student: validation accuracy (%)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def write_sweep_report(
    candidates: list[dict[str, Any]],
    chosen: dict[str, Any],
    test_accuracy: float,
    out_dir: str | Path,
) -> dict[str, Path]:
    """``heatmap.png``, a self-contained ``sweep.html`` and ``sweep.md`` into ``out_dir``."""
    out = Path(out_dir)
    png = plot_heatmap(candidates, chosen, out / "heatmap.png")
    rows = "".join(
        f"<tr><td>{html.escape(c.get('loss', 'hinton'))}</td><td>{c['temperature']:g}</td>"
        f"<td>{c['alpha']:g}</td><td>{100 * c['val_accuracy']:.2f} %</td>"
        f"<td>{'chosen' if c is chosen else ''}</td></tr>"
        for c in sorted(candidates, key=_order)
    )
    loss = html.escape(chosen.get("loss", "hinton"))
    img = base64.b64encode(png.read_bytes()).decode()
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>T x alpha sweep</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px}</style>"
        "</head><body><h1>Temperature x alpha sweep</h1>"
        f"<p id='chosen'>Chosen by validation accuracy: loss {loss}, T = "
        f"{chosen['temperature']:g}, alpha = {chosen['alpha']:g} (validation "
        f"{100 * chosen['val_accuracy']:.2f} %); its test "
        f"accuracy: <b>{100 * test_accuracy:.2f} %</b>. The test set was not used to choose.</p>"
        f"<img alt='heatmap' src='data:image/png;base64,{img}'>"
        "<table><tr><th>loss</th><th>T</th><th>alpha</th><th>validation accuracy</th>"
        "<th></th></tr>"
        f"{rows}</table></body></html>"
    )
    write_text_atomic(out / "sweep.html", page)
    md = (
        f"# Temperature x alpha sweep\n\nChosen by validation accuracy: loss "
        f"{chosen.get('loss', 'hinton')}, T = {chosen['temperature']:g}, "
        f"alpha = {chosen['alpha']:g} (validation "
        f"{100 * chosen['val_accuracy']:.2f} %); test accuracy {100 * test_accuracy:.2f} %.\n\n"
        "| loss | T | alpha | validation accuracy |\n|:--|--:|--:|--:|\n"
        + "".join(
            f"| {c.get('loss', 'hinton')} | {c['temperature']:g} | {c['alpha']:g} | "
            f"{100 * c['val_accuracy']:.2f} % |\n"
            for c in sorted(candidates, key=_order)
        )
    )
    write_text_atomic(out / "sweep.md", md)
    return {"heatmap": png, "html": out / "sweep.html", "markdown": out / "sweep.md"}


def select_best(
    model_dirs: list[str], test: tuple[str, str | None], out_dir: str, report_dir: str
) -> dict[str, Any]:
    """Choose the best student by validation accuracy, copy it to ``out_dir``, measure its
    test accuracy, and write the sweep report into ``report_dir``."""
    import shutil

    from kd import stages
    from kd.evaluate import classification_metrics, predict_logits
    from kd.model_folder import load_model

    candidates = read_candidates(model_dirs)
    chosen = choose(candidates)
    x, y = stages._load(*test, "test")
    model = load_model(chosen["dir"])
    test_acc = float(classification_metrics(y, predict_logits(model, x))["accuracy"])
    with atomic_path(out_dir) as tmp:
        shutil.copytree(chosen["dir"], tmp, ignore=shutil.ignore_patterns("checkpoint"))
    paths = write_sweep_report(candidates, chosen, test_acc, report_dir)
    return {
        "chosen": {k: v for k, v in chosen.items() if k != "dir"},
        "test_accuracy": test_acc,
        "candidates": [{k: v for k, v in c.items() if k != "dir"} for c in candidates],
        "paths": {k: str(v) for k, v in paths.items()},
    }
