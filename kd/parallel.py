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
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import keras

from kd.errors import ConfigError

#: The replicas of the :func:`data_parallel` block being run (1 outside one).
_ACTIVE = [1]


def visible_devices() -> list[Any]:
    """The devices a step can train on: JAX's devices of its default platform; on TensorFlow
    the logical GPUs, or the logical CPU devices when there is no GPU (one, unless configured
    otherwise)."""
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
    if n > have:
        raise ConfigError(
            f"invalid devices={requested}: {where} sees {have} device(s). Fix: reserve "
            f"{requested} GPUs for the step (pipeline.py compile --gpus {requested}), or set "
            "devices=0 to use the visible ones"
        )
    if batch_size % n:
        raise ConfigError(
            f"invalid batch_size={batch_size}: it is the global batch, split evenly over "
            f"{n} devices. Fix: use a multiple of {n} (e.g. {batch_size - batch_size % n or n})"
        )
    return n


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
    if n == 1:
        yield 1
        return
    devices = visible_devices()[:n]
    _ACTIVE.append(n)
    try:
        if keras.backend.backend() == "jax":
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
