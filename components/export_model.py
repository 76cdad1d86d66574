"""Component: publish the blessed serving model (runs only when the quality gate passed)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.docs import config_args
from components.image import IMAGE
from kd.config import ExportConfig


@dsl.component(base_image=IMAGE, install_kfp_package=False)
@config_args(
    ExportConfig,
    student="the distilled student that passed the gate.",
    train="the training Dataset (the int8 calibration images come from it).",
    test="the test Dataset; the SavedModel must reproduce the Keras predictions on it.",
    blessed="the serving model: a SavedModel at its root (Vertex AI) and in "
    "serving/kd_student/1/ (TF Serving, KServe); model.keras, export.json.",
    edge="TFLite and ONNX models (model_float32.tflite, model_int8.tflite, tflite.json, "
    "model.onnx, onnx.json).",
    edge_metrics="size (bytes), test accuracy, drop vs Keras (points), latency (ms).",
)
def export_model(
    student: Input[Model],
    train: Input[Dataset],
    test: Input[Dataset],
    check_images: int,
    calibration_images: int,
    blessed: Output[Model],
    edge: Output[Model],
    edge_metrics: Output[Metrics],
):
    """Export the distilled student as a SavedModel (``serving_default``) and a .keras file."""
    from kd.stages import export_blessed, export_edge
    from kd.storage import write_metrics_file

    info = export_blessed(
        student.path, (test.path, test.metadata.get("sha256")), check_images, blessed.path
    )
    blessed.metadata.update(student.metadata)
    blessed.metadata.update({"blessed": True, **info})
    tfl = export_edge(
        blessed.path,
        (train.path, train.metadata.get("sha256")),
        (test.path, test.metadata.get("sha256")),
        calibration_images,
        edge.path,
    )
    edge.metadata.update({"formats": "tflite float32, int8; onnx", **student.metadata})
    for fmt in ("float32", "int8", "onnx"):
        for key, value in tfl.get(fmt, {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                edge_metrics.log_metric(f"{fmt}_{key}", value)
    write_metrics_file(edge_metrics.path, edge_metrics.metadata)
