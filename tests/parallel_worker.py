"""Training on N devices in its own process (the device count is fixed at start-up).

    python tests/parallel_worker.py STAGE DEVICES OUT_DIR

STAGE is scratch, distill (from a tiny teacher trained first, in OUT_DIR/teacher) or
distill-cached (2 cached teacher views); DEVICES is TrainConfig.devices (0: all visible).
KD_TEST_TRAIN / KD_TEST_VAL / KD_TEST_BATCH change the split sizes and the batch (200 / 100 /
50). Set KERAS_BACKEND and either XLA_FLAGS=--xla_force_host_platform_device_count=K (JAX) or
KD_TEST_CPU_DEVICES=K (TensorFlow: K logical CPU devices) before it starts; or TF_CONFIG (one
replica of a multi-replica job: start one process per replica). Prints one JSON line: the
stage's log lines, the student's weights file and the teacher's weight checksum before and
after.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

if os.environ.get("TF_CONFIG"):
    from kd.parallel import join_cluster

    join_cluster()  # as the stages do, before any TensorFlow op
    import keras

    keras.config.disable_traceback_filtering()
elif os.environ.get("KD_TEST_CPU_DEVICES"):
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    count = int(os.environ["KD_TEST_CPU_DEVICES"])
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * count
    )

import numpy as np  # noqa: E402

import kd.distill  # noqa: E402
from kd.config import DistillConfig, StudentConfig  # noqa: E402
from kd.data import load_cifar10  # noqa: E402
from kd.distill import distill_student  # noqa: E402
from kd.model_folder import load_model  # noqa: E402
from kd.train import train_student_scratch  # noqa: E402

EPOCHS = int(os.environ.get("KD_TEST_EPOCHS", "1"))


def main() -> None:
    stage, devices, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    d = load_cifar10("sample")
    n_train, n_val = (
        int(os.environ.get("KD_TEST_TRAIN", "200")),
        int(os.environ.get("KD_TEST_VAL", "100")),
    )
    batch = int(os.environ.get("KD_TEST_BATCH", "50"))
    train = (d.x_train[:n_train], d.y_train[:n_train])
    val = (d.x_train[2000 : 2000 + n_val], d.y_train[2000 : 2000 + n_val])
    # clipnorm > 0: the clip must see the global gradient on every backend (kd.parallel)
    common = dict(epochs=EPOCHS, batch_size=batch, divergence_check_epoch=0, seed=3, clipnorm=2.0)
    lines: list[str] = []
    teacher_sum = None
    if stage == "scratch":
        train_student_scratch(
            train, val, StudentConfig(devices=devices, **common), out, lines.append
        )
    else:
        teacher_dir = out.parent / f"{out.name}-teacher"
        # (a replica of a multi-replica job trains on all the replicas' devices: 0)
        one = 0 if os.environ.get("TF_CONFIG") else 1
        cfg1 = StudentConfig(
            epochs=1, batch_size=batch, divergence_check_epoch=0, seed=1, devices=one
        )
        train_student_scratch(train, val, cfg1, teacher_dir, log=lambda m: None)
        teacher = load_model(teacher_dir)
        # The teacher that trains is the one distill_student replicates inside the block
        # (itself on one device): its weights are read before and after.
        used: list = []
        real = kd.distill.replicate
        kd.distill.replicate = lambda m: used.append(real(m)) or used[-1]
        before = float(sum(np.abs(w).sum() for w in teacher.get_weights()))
        views = 2 if stage == "distill-cached" else 0
        cfg = DistillConfig(devices=devices, teacher_views=views, **common)
        distill_student(teacher, train, val, cfg, out, lines.append)
        after = float(sum(np.abs(w).sum() for w in used[0].get_weights()))
        teacher_sum = [before, after]
    weights = np.concatenate([np.ravel(w) for w in load_model(out).get_weights()])
    np.save(out / "weights.npy", weights)
    print(json.dumps({"log": lines, "teacher_sum": teacher_sum}))


if __name__ == "__main__":
    main()
