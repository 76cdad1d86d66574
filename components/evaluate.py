"""Component: evaluate the three models side by side and decide the quality gate."""

from kfp import dsl
from kfp.dsl import (
    HTML,
    Artifact,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
)

from components.docs import config_args
from components.image import IMAGE
from kd.config import EvalConfig, GateConfig


@dsl.component(base_image=IMAGE, install_kfp_package=False)
@config_args(
    EvalConfig,
    GateConfig,
    teacher="the teacher Model.",
    student_distilled="the distilled student Model.",
    student_scratch="the scratch student Model.",
    test="the test Dataset from data_split (its sha256 is checked).",
    validation="the validation Dataset from data_split: the gate decides on it.",
    metrics="accuracies, KD gain, compression ratio (also metrics.json in the file).",
    teacher_confusion="the teacher's confusion matrix.",
    distilled_confusion="the distilled student's confusion matrix.",
    scratch_confusion="the scratch student's confusion matrix.",
    report="the self-contained HTML report.",
    summary="the Markdown summary (with the gate's decision).",
    report_files="the report folder (PNGs, metrics.json, metrics.csv).",
)
def evaluate(
    teacher: Input[Model],
    student_distilled: Input[Model],
    student_scratch: Input[Model],
    test: Input[Dataset],
    validation: Input[Dataset],
    min_kd_gain: float,
    min_accuracy: float,
    refuse_collapsed: bool,
    batch_size: int,
    latency_runs: int,
    metrics: Output[Metrics],
    teacher_confusion: Output[ClassificationMetrics],
    distilled_confusion: Output[ClassificationMetrics],
    scratch_confusion: Output[ClassificationMetrics],
    report: Output[HTML],
    summary: Output[Markdown],
    report_files: Output[Artifact],
) -> bool:
    """Test accuracy, per-class metrics, calibration, size and latency of the three models.

    Returns:
        Whether the quality gate passed (the summary and the report say which condition
        failed, if any).
    """
    from kd.config import EvalConfig, GateConfig
    from kd.stages import copy_file
    from kd.stages import evaluate as run
    from kd.storage import write_metrics_file

    out = run(
        {
            "teacher": teacher.path,
            "student_distilled": student_distilled.path,
            "student_scratch": student_scratch.path,
        },
        (test.path, test.metadata.get("sha256")),
        (validation.path, validation.metadata.get("sha256")),
        EvalConfig(batch_size=batch_size, latency_runs=latency_runs),
        GateConfig(
            min_kd_gain=min_kd_gain, min_accuracy=min_accuracy, refuse_collapsed=refuse_collapsed
        ),
        report_files.path,
        run_info={"test_dataset": dict(test.metadata)},
    )
    comp = out["comparison"]
    for name, r in out["results"].items():
        metrics.log_metric(f"{name}_accuracy", r["accuracy"])
    for key in ("kd_gain_points", "relative_error_reduction", "compression_ratio"):
        if comp.get(key) is not None:
            metrics.log_metric(key, comp[key])
    metrics.log_metric("gate_passed", int(out["gate_passed"]))
    if out["gate"].get("val_kd_gain_points") is not None:
        metrics.log_metric("val_kd_gain_points", out["gate"]["val_kd_gain_points"])
    for art, name in (
        (teacher_confusion, "teacher"),
        (distilled_confusion, "student_distilled"),
        (scratch_confusion, "student_scratch"),
    ):
        art.log_confusion_matrix(out["class_names"], out["results"][name]["confusion_matrix"])
        write_metrics_file(art.path, art.metadata)
    copy_file(out["paths"]["metrics_json"], metrics.path)
    copy_file(out["paths"]["report_html"], report.path)
    copy_file(out["paths"]["summary_md"], summary.path)
    summary.metadata["gate"] = out["gate_reason"]
    return bool(out["gate_passed"])
