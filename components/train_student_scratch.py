"""Component: train the student from scratch (the baseline)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.docs import config_args
from components.image import IMAGE
from kd.config import ScratchConfig, StudentConfig


@dsl.component(base_image=IMAGE, install_kfp_package=False)
@config_args(
    StudentConfig,
    ScratchConfig,
    train="training Dataset from data_split (its sha256 is checked).",
    validation="validation Dataset from data_split.",
    model="the scratch student (folder: model.keras, history.json, info.json).",
    metrics="best and final validation accuracy.",
)
def train_student_scratch(
    train: Input[Dataset],
    validation: Input[Dataset],
    preset: str,
    epochs: int,
    batch_size: int,
    optimizer: str,
    learning_rate: float,
    momentum: float,
    weight_decay: float,
    schedule: str,
    warmup_epochs: int,
    clipnorm: float,
    label_smoothing: float,
    augment: bool,
    mixed_precision: bool,
    early_stopping_patience: int,
    divergence_check_epoch: int,
    seed: int,
    jit_compile: bool,
    devices: int,
    scratch_learning_rate: float,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Train the student of ``preset`` from scratch on hard labels (same builder and seed as the
    distilled student, at ``scratch_learning_rate`` when > 0); resumes from its last epoch on
    retry. Needs no teacher.
    """
    from kd.config import ScratchConfig, StudentConfig, from_dict
    from kd.stages import train_student_scratch as run
    from kd.storage import write_metrics_file

    params = dict(locals())
    shared = from_dict(StudentConfig, {k: params[k] for k in StudentConfig.__dataclass_fields__})
    cfg = ScratchConfig(scratch_learning_rate).apply(shared)
    info = run(
        (train.path, train.metadata.get("sha256")),
        (validation.path, validation.metadata.get("sha256")),
        cfg,
        model.path,
    )
    model.metadata.update(
        {k: info[k] for k in ("preset", "role", "framework", "best_val_accuracy")}
    )
    model.metadata["parameters"] = info["parameters"]["total"]
    metrics.log_metric("best_val_accuracy", info["best_val_accuracy"])
    metrics.log_metric("final_val_accuracy", info["final_val_accuracy"])
    metrics.log_metric("epochs_run", info["epochs_run"])
    write_metrics_file(metrics.path, metrics.metadata)
