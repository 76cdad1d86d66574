"""Data parallelism over the devices a training step can see (``pipeline.py --gpus N``).

With N > 1 devices, every training stage (teacher, scratch, distillation, the teacher-logit
cache included) runs inside :func:`data_parallel`: each global batch of ``batch_size`` images
is split into N equal shards, one per device, every model's variables are replicated (the
distiller's teacher too, frozen), and the gradients are summed across devices before the
update. ``batch_size`` is the **global** batch: it must be divisible by N, and the learning
rate is the one for that global batch, so a run on N devices trains like a run on one device
with the same ``batch_size`` (the same data order, augmentation and schedule; tested on two
and four virtual CPU devices): on JAX for every model, on TensorFlow for models without
BatchNorm (see below; the seed student has none, the teachers have it).

- JAX: ``keras.distribution.DataParallel`` over the first N of ``jax.devices()``. The step is
  one program over the global batch, so BatchNorm's statistics are the global batch's and
  the gradient-norm clip sees the global gradient.
- TensorFlow: ``tf.distribute.MirroredStrategy`` over the first N GPUs (or, without GPUs,
  logical CPU devices; the tests' way of having two). BatchNorm normalises each replica's
  shard by its own statistics, as under any ``MirroredStrategy`` (no ``SyncBatchNorm`` here).
  Keras clips the global gradient norm on each replica's partial gradient before summing
  them; :func:`clip_after_all_reduce` sums first, so the clip sees the global gradient as on
  one device (one extra all-reduce per step, only with ``clipnorm`` > 0).

``TrainConfig.devices`` picks N: 0 (default) uses every visible device (one per GPU the
step reserved), N > 0 exactly N (more than are visible is a ConfigError before training).

**Several machines** (``pipeline.py compile --replicas R``: a Vertex AI custom job of R
replicas, :mod:`kd.custom_job`). Vertex AI sets ``TF_CONFIG`` on every replica (the cluster's
addresses, this replica's role); :func:`join_cluster`, called by each training stage before
its first TensorFlow op, then starts ``tf.distribute.MultiWorkerMirroredStrategy``, and N is
every replica's devices together (R x the GPUs of each): the same global-batch rule, the
gradients all-reduced across the machines. Replica 0 (the chief) writes the stage's outputs;
the others write theirs to a scratch folder and, on a retry, resume from the chief's
checkpoint (:func:`seed_checkpoint`). On JAX, several processes are refused (a ConfigError):
Keras' multi-process ``DataParallel`` needs each process to load its own shard of the data,
which this package's input pipeline does not do.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from kd.config import uneven_batch
from kd.custom_job import CHIEF_OUTPUT_ENV
from kd.errors import ConfigError

#: The replicas of the :func:`data_parallel` block being run (1 outside one).
_ACTIVE = [1]


@dataclass(frozen=True)
class Cluster:
    """The machines that train one step together: ``workers`` processes, this one ``index``
    (0: the chief, which writes the outputs)."""

    workers: int = 1
    index: int = 0

    @property
    def chief(self) -> bool:
        return self.index == 0


def cluster() -> Cluster:
    """This process's place in a multi-replica job, from ``TF_CONFIG`` (Vertex AI's and
    ``tf.distribute``'s format: ``{"cluster": {"chief": [...], "worker": [...]}, "task":
    {"type": ..., "index": ...}}``); one worker without it."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return Cluster()
    try:
        spec = json.loads(raw)
        jobs, task = spec.get("cluster", {}), spec.get("task", {})
        chiefs, workers = list(jobs.get("chief", [])), list(jobs.get("worker", []))
        kind, index = task.get("type", ""), int(task.get("index", 0))
    except (ValueError, AttributeError, TypeError) as exc:
        raise ConfigError(
            f"TF_CONFIG is not a cluster spec ({exc}): {raw[:200]!r}. Fix: unset it, or give "
            '{"cluster": {"chief": [...], "worker": [...]}, "task": {"type": ..., "index": ...}}'
        ) from exc
    others = sorted(set(jobs) - {"chief", "worker"})
    if others or kind not in ("chief", "worker") or len(chiefs) > 1:
        raise ConfigError(
            f"TF_CONFIG has roles {sorted(jobs)} and this task is {kind!r}: only one chief and "
            "workers train here (data parallelism, no parameter servers or evaluators). Fix: "
            "run the step with one worker pool of R replicas (pipeline.py compile --replicas R)"
        )
    total = len(chiefs) + len(workers)
    rank = index if kind == "chief" else len(chiefs) + index
    if not 0 <= rank < total:
        raise ConfigError(f"TF_CONFIG's task {kind}/{index} is not in its cluster of {total}")
    return Cluster(total, rank)


@functools.cache
def _multi_worker_strategy() -> Any:
    import tensorflow as tf

    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as exc:  # TensorFlow ran before: collectives are set at start-up
        raise ConfigError(
            f"cannot join the {cluster().workers}-replica cluster of TF_CONFIG: {exc}. Fix: "
            "call kd.parallel.join_cluster() before any TensorFlow op (the stages do)"
        ) from exc


def join_cluster() -> Cluster:
    """Start training with the other replicas of ``TF_CONFIG`` (nothing with one worker).
    Must run before this process's first TensorFlow op; the training stages call it first."""
    c = cluster()
    if c.workers > 1:
        if keras.backend.backend() != "tensorflow":
            raise ConfigError(
                f"TF_CONFIG names {c.workers} replicas, but the {keras.backend.backend()} "
                "backend trains on one machine here. Fix: KERAS_BACKEND=tensorflow (the "
                "image's), or run the step with one replica"
            )
        _multi_worker_strategy()
    return c


def seed_checkpoint(ckpt: Path) -> None:
    """On a replica that is not the chief: make ``ckpt`` the chief's checkpoint
    (``$KD_CHIEF_OUTPUT/checkpoint``; none if the chief has none), so that every replica of a
    retried or restarted job resumes from the same epoch: the chief's is the one that counts,
    a worker's own may be older or from another job. Only the checkpoint's finished files are
    copied (the chief may be renaming its own into place meanwhile). Anywhere else nothing."""
    source = os.environ.get(CHIEF_OUTPUT_ENV, "")
    if cluster().chief or not source:
        return
    shutil.rmtree(ckpt, ignore_errors=True)
    chief = Path(source) / ckpt.name
    if not chief.is_dir():
        return
    ckpt.mkdir(parents=True)
    for f in sorted(chief.iterdir()):
        if f.name.startswith("."):  # a temporary the chief is writing
            continue
        try:
            shutil.copy2(f, ckpt / f.name)
        except FileNotFoundError:  # replaced by a newer one as we listed
            continue


def visible_devices() -> list[Any]:
    """The devices a step can train on: JAX's devices of its default platform; on TensorFlow
    the logical GPUs, or the logical CPU devices when there is no GPU (one, unless configured
    otherwise); in a multi-replica job, every replica's (``num_replicas_in_sync`` of them)."""
    if cluster().workers > 1:
        return [None] * _strategy_of_cluster().num_replicas_in_sync
    if keras.backend.backend() == "jax":
        import jax

        return list(jax.devices())
    import tensorflow as tf

    return list(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU"))


def replicas(requested: int, batch_size: int, where: str = "training") -> int:
    """N, the devices to train on: ``requested`` (0: all visible), checked against what is
    visible and against ``batch_size`` (the global batch, which N must divide)."""
    have = len(visible_devices())
    n = requested or have
    if cluster().workers > 1 and n != have:
        raise ConfigError(
            f"invalid devices={requested}: {where} is one of {cluster().workers} replicas, "
            f"which train on all their {have} devices together. Fix: set devices=0"
        )
    if n > have:
        raise ConfigError(
            f"invalid devices={requested}: {where} sees {have} device(s). Fix: reserve "
            f"{requested} GPUs for the step (pipeline.py compile --gpus {requested}), or set "
            "devices=0 to use the visible ones"
        )
    if fix := uneven_batch(batch_size, n):
        raise ConfigError(
            f"invalid batch_size={batch_size}: it is the global batch, split evenly over "
            f"{n} devices. Fix: use {fix}"
        )
    return n


def multi_worker_fit(model: Any) -> Any:
    """``model``, ready for ``fit`` in a multi-replica job (else unchanged).

    Works around two faults of Keras 3.15's TensorFlow trainer across machines
    (``MultiWorkerMirroredStrategy``), both in private code, so both checked by
    ``tests/test_parallel.py`` on every upgrade:

    - before training it builds the model from the first batch, made one batch by a
      cross-replica MEAN (``_maybe_symbolic_build``): across machines a collective op that
      fails on a dict of inputs (keras-team/keras#20329, open) and would average uint8 images
      besides. The build needs the batch's shapes and dtypes only: here it takes this
      replica's own part of the same first batch.
    - each step's logs (loss, metrics: scalars, already the same on every replica, since
      Keras' metrics aggregate across replicas) are reduced across the machines with
      ``strategy.reduce("MEAN", v, axis=0)``, which fails on a scalar ("Invalid reduction
      dimension 0"); here values that are not per-replica pass through as they are, and
      per-replica scalars (several devices per machine) are averaged with ``axis=None``.
    """
    if cluster().workers == 1:
        return model
    import types

    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if not getattr(tf_trainer.reduce_per_replica, "kd_scalar_mean", False):
        original = tf_trainer.reduce_per_replica

        def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
            if reduction not in ("auto", "mean"):
                return original(values, strategy, reduction)

            def mean(v: Any) -> Any:
                if isinstance(v, tf.distribute.DistributedValues):
                    local = strategy.experimental_local_results(v)[0]
                    axis = None if local.shape.rank == 0 else 0
                    return strategy.reduce("MEAN", v, axis=axis)
                return v

            return tf.nest.map_structure(mean, values)

        reduce_per_replica.kd_scalar_mean = True  # type: ignore[attr-defined]
        tf_trainer.reduce_per_replica = reduce_per_replica

    def build(self: Any, iterator: Any = None, data_batch: Any = None) -> Any:
        strategy = self.distribute_strategy
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: (
                        strategy.experimental_local_results(v)[0]
                        if isinstance(v, tf.distribute.DistributedValues)
                        else v
                    ),
                    next(it),
                )
                break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = types.MethodType(build, model)
    return model


def _strategy_of_cluster() -> Any:
    join_cluster()
    return _multi_worker_strategy()


def replicate(model: Any) -> Any:
    """``model`` rebuilt with its weights inside the :func:`data_parallel` block being run
    (so its variables are replicated like those built there), or ``model`` itself outside
    one. For a model loaded before the block, e.g. the distiller's teacher."""
    if active() == 1:
        return model
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    copy.trainable = model.trainable
    return copy


def shard_multiple() -> int:
    """What every batch's size must be a multiple of: N inside a :func:`data_parallel` block
    on JAX (its sharding splits each batch into N equal shards), else 1 (TensorFlow's
    ``MirroredStrategy`` splits uneven batches itself)."""
    return active() if keras.backend.backend() == "jax" else 1


def predict(model: Any, inputs: dict[str, Any], batch_size: int) -> Any:
    """``model.predict(inputs)`` in batches of about ``batch_size``, on any number of rows:
    inside a JAX :func:`data_parallel` block the rows are padded (the last one repeated) to a
    multiple of N and the batch rounded to one, and the padding's outputs dropped (inference:
    each row's output depends on that row alone)."""
    import numpy as np

    m = shard_multiple()
    n = len(next(iter(inputs.values())))
    if m == 1:
        return model.predict(inputs, batch_size=batch_size, verbose=0)
    extra = -n % m
    padded = {k: np.concatenate([v, np.repeat(v[-1:], extra, axis=0)]) for k, v in inputs.items()}
    batch = max(m, batch_size - batch_size % m)
    return np.asarray(model.predict(padded, batch_size=batch, verbose=0))[:n]


def active() -> int:
    """The number of replicas of the :func:`data_parallel` block being run (1 outside)."""
    return _ACTIVE[-1]


@contextlib.contextmanager
def data_parallel(n: int) -> Iterator[int]:
    """Build, compile and train inside this block to train over the first ``n`` visible
    devices (see the module docstring); ``n`` = 1 changes nothing. Yields ``n``."""
    if n == 1 and cluster().workers == 1:
        yield 1
        return
    devices = visible_devices()[:n]
    _ACTIVE.append(n)
    try:
        if cluster().workers > 1:
            with _strategy_of_cluster().scope():
                yield n
        elif keras.backend.backend() == "jax":
            previous = keras.distribution.distribution()
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
            try:
                yield n
            finally:
                keras.distribution.set_distribution(previous)
        else:
            import tensorflow as tf

            with tf.distribute.MirroredStrategy([d.name for d in devices]).scope():
                yield n
    finally:
        _ACTIVE.pop()


def clip_after_all_reduce(optimizer_class: type) -> type:
    """``optimizer_class`` whose global-norm clip (``global_clipnorm``) acts on the gradient
    summed over a ``tf.distribute`` strategy's replicas, not on each replica's part.

    Keras 3.15's TensorFlow optimizer clips in each replica, then sums the clipped parts
    (``BaseOptimizer.apply`` -> ``_clip_gradients`` -> ``_backend_update_step``'s all-reduce):
    the clip then depends on N. Here each replica sums the parts first (``all_reduce``),
    clips that, and hands on 1/N of it, so the optimizer's own sum rebuilds the clipped global
    gradient. Outside a strategy, on JAX or without clipping, it is ``optimizer_class``."""

    class ClipAfterAllReduce(optimizer_class):  # type: ignore[valid-type, misc]
        def _clip_gradients(self, grads: list[Any]) -> list[Any]:
            if keras.backend.backend() != "tensorflow" or not self.global_clipnorm:
                return list(super()._clip_gradients(grads))
            import tensorflow as tf

            ctx = tf.distribute.get_replica_context()
            n = tf.distribute.get_strategy().num_replicas_in_sync
            if ctx is None or n == 1:
                return list(super()._clip_gradients(grads))
            present = [g for g in grads if g is not None]
            summed = iter(ctx.all_reduce(tf.distribute.ReduceOp.SUM, present))
            full = [None if g is None else next(summed) for g in grads]
            clipped = super()._clip_gradients(full)
            return [None if g is None else g / n for g in clipped]

    return ClipAfterAllReduce
