"""A training run in its own process, for the kill-and-resume tests.

    python tests/train_worker.py STAGE OUT_DIR [TEACHER_DIR]

STAGE is teacher, scratch, distill, distill-cached (3 cached teacher views) or
distill-dkd-cached (the same with decoupled KD on standardized logits) or distill-features
(Hinton's loss plus a projected feature term, online teacher). Trains on the
first 400 images of the shipped sample (4 epochs, batch 50), so an epoch takes a second or two
on a CPU.
"""

from __future__ import annotations

import sys

from kd.config import DistillConfig, StudentConfig, TeacherConfig
from kd.data import load_cifar10
from kd.distill import distill_student
from kd.model_folder import load_model
from kd.train import train_student_scratch, train_teacher

EPOCHS = 4


def main() -> None:
    stage, out = sys.argv[1], sys.argv[2]
    d = load_cifar10("sample")
    train = (d.x_train[:400], d.y_train[:400])
    val = (d.x_train[2000:2200], d.y_train[2000:2200])
    common = dict(epochs=EPOCHS, batch_size=50, divergence_check_epoch=0, seed=3)
    if stage == "teacher":
        train_teacher(train, val, TeacherConfig(learning_rate=0.02, **common), out)
    elif stage == "scratch":
        train_student_scratch(train, val, StudentConfig(**common), out)
    elif stage == "distill":
        teacher = load_model(sys.argv[3])
        distill_student(teacher, train, val, DistillConfig(**common), out)
    elif stage == "distill-cached":
        # A resumed run caches the teacher again: it must get the same views.
        teacher = load_model(sys.argv[3])
        distill_student(teacher, train, val, DistillConfig(teacher_views=3, **common), out)
    elif stage == "distill-dkd-cached":
        # Another loss (decoupled KD on standardized logits, which reads the labels) resumes too.
        teacher = load_model(sys.argv[3])
        cfg = DistillConfig(teacher_views=3, kd_loss="dkd", logit_standardization=True, **common)
        distill_student(teacher, train, val, cfg, out)
    elif stage == "distill-features":
        # The feature term's projection lives in the fit model: a resume must restore it too.
        teacher = load_model(sys.argv[3])
        cfg = DistillConfig(
            feature_weight=0.5,
            teacher_feature_layer="pool1",
            student_feature_layer="conv2",
            **common,
        )
        distill_student(teacher, train, val, cfg, out)
    else:
        raise SystemExit(f"unknown stage {stage}")


if __name__ == "__main__":
    main()
