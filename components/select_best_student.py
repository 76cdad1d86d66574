"""Component: fan-in of the sweep; choose the best distilled student by validation accuracy."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def select_best_student(
    students: Input[list[Model]],
    test: Input[Dataset],
    best: Output[Model],
    metrics: Output[Metrics],
    heatmap: Output[HTML],
    summary: Output[Markdown],
):
    """Pick the student with the best validation accuracy (never test), then test it.

    Args:
        students: the distilled students of every (T, alpha) grid point (dsl.Collected).
        test: the test Dataset (only the chosen student is evaluated on it).
        best: the chosen student (folder: model.keras, history.json, info.json).
        metrics: the chosen T and alpha, its validation and test accuracy.
        heatmap: validation accuracy over T and alpha (self-contained HTML).
        summary: the sweep table in Markdown.
    """
    import tempfile

    from kd.stages import copy_file
    from kd.storage import write_metrics_file
    from kd.sweep import select_best

    report_dir = tempfile.mkdtemp(prefix="sweep-")
    out = select_best(
        [s.path for s in students], (test.path, test.metadata.get("sha256")), best.path, report_dir
    )
    best.metadata.update({**out["chosen"], "test_accuracy": out["test_accuracy"]})
    for key, value in out["chosen"].items():
        metrics.log_metric(f"chosen_{key}", value)
    metrics.log_metric("chosen_test_accuracy", out["test_accuracy"])
    write_metrics_file(metrics.path, metrics.metadata)
    copy_file(out["paths"]["html"], heatmap.path)
    copy_file(out["paths"]["markdown"], summary.path)
