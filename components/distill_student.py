"""Component: distill the student from the teacher."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
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
    temperature: float,
    alpha: float,
    teacher_views: int,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Distill the student of ``preset`` from the teacher (Hinton KD on logits).

    Loss: ``alpha * CE(y, s) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))``, batch
    mean; the teacher is frozen and runs in inference mode. Resumes from its last epoch on
    retry.

    Args:
        teacher: the teacher Model from train_teacher.
        train: training Dataset from data_split (its sha256 is checked).
        validation: validation Dataset from data_split.
        preset: model preset (``seed``: the notebook's architectures; ``resnet``).
        epochs: training epochs.
        batch_size: images per step.
        optimizer: ``sgd`` (Nesterov), ``adam`` or ``adamw``.
        learning_rate: peak learning rate.
        momentum: SGD momentum.
        weight_decay: decoupled weight decay.
        schedule: ``cosine`` (warm-up, cosine decay) or ``constant``.
        warmup_epochs: linear warm-up epochs.
        clipnorm: global gradient-norm clip (0 = off).
        label_smoothing: label smoothing of the cross-entropy (0-1).
        augment: random crop + horizontal flip.
        mixed_precision: bfloat16 compute.
        early_stopping_patience: epochs without a better val accuracy before stopping (0 = off).
        divergence_check_epoch: from this epoch, val accuracy at chance fails the step (0 = off).
        seed: seed of init, data order, augmentation and dropout.
        temperature: T > 0 of the soft targets.
        alpha: weight of the hard-label loss (0-1); 1 - alpha weights the soft loss.
        teacher_views: 0 runs the teacher on every batch; K >= 1 caches its logits for K
            augmented views of each training image first (K teacher passes instead of one per
            epoch) and trains on those views.
        model: the distilled student (folder: model.keras, history.json, info.json).
        metrics: best and final validation accuracy.
    """
    from kd.config import DistillConfig, from_dict
    from kd.stages import distill_student as run

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
        {"temperature": temperature, "alpha": alpha, "teacher_views": teacher_views}
    )
    who = info.get("teacher") or {}
    model.metadata.update(
        {f"teacher_{k}": who[k] for k in ("uri", "sha256", "architecture") if who.get(k)}
    )
    if "teacher_cache_s" in info:
        metrics.log_metric("teacher_cache_s", info["teacher_cache_s"])
    metrics.log_metric("best_val_accuracy", info["best_val_accuracy"])
    metrics.log_metric("final_val_accuracy", info["final_val_accuracy"])
    metrics.log_metric("epochs_run", info["epochs_run"])
