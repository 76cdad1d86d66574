"""Component: distill the student from the teacher."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.docs import config_args
from components.image import IMAGE
from kd.config import DistillConfig


@dsl.component(base_image=IMAGE, install_kfp_package=False)
@config_args(
    DistillConfig,
    teacher="the teacher Model from train_teacher.",
    train="training Dataset from data_split (its sha256 is checked).",
    validation="validation Dataset from data_split.",
    model="the distilled student (folder: model.keras, history.json, info.json).",
    metrics="best and final validation accuracy.",
)
def distill_student(
    teacher: Input[Model],
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
    temperature: float,
    alpha: float,
    teacher_views: int,
    teacher_mixup_views: int,
    kd_loss: str,
    logit_standardization: bool,
    dkd_alpha: float,
    dkd_beta: float,
    dist_beta: float,
    dist_gamma: float,
    feature_weight: float,
    teacher_feature_layer: str,
    student_feature_layer: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Distill the student of ``preset`` from the teacher (on logits).

    Loss: ``alpha * CE(y, s) + (1 - alpha) * D(t, s)``, batch mean, ``D`` the soft loss of
    ``kd_loss`` (``hinton``: ``T^2 * KL(softmax(t/T) || softmax(s/T))``; ``dkd``, ``dist``:
    kd.distill; ``feature_weight`` > 0 adds ``feature_weight * MSE`` of named layers' outputs to
    ``D``); the teacher is frozen and runs in inference mode. Resumes from its last
    epoch on retry.
    """
    from kd.config import DistillConfig, from_dict
    from kd.stages import distill_student as run
    from kd.storage import write_metrics_file

    params = dict(locals())
    cfg = from_dict(DistillConfig, {k: params[k] for k in DistillConfig.__dataclass_fields__})
    info = run(
        teacher.path,
        (train.path, train.metadata.get("sha256")),
        (validation.path, validation.metadata.get("sha256")),
        cfg,
        model.path,
    )
    model.metadata.update(
        {k: info[k] for k in ("preset", "role", "framework", "best_val_accuracy")}
    )
    model.metadata["parameters"] = info["parameters"]["total"]
    model.metadata.update(
        {
            "temperature": temperature,
            "alpha": alpha,
            "teacher_views": teacher_views,
            "teacher_mixup_views": teacher_mixup_views,
        }
    )
    model.metadata["kd_loss"] = cfg.loss_label()
    who = info.get("teacher") or {}
    model.metadata.update(
        {f"teacher_{k}": who[k] for k in ("uri", "sha256", "architecture") if who.get(k)}
    )
    if "teacher_cache_s" in info:
        metrics.log_metric("teacher_cache_s", info["teacher_cache_s"])
    metrics.log_metric("best_val_accuracy", info["best_val_accuracy"])
    metrics.log_metric("final_val_accuracy", info["final_val_accuracy"])
    metrics.log_metric("epochs_run", info["epochs_run"])
    write_metrics_file(metrics.path, metrics.metadata)
