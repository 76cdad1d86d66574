"""Supervised training (the teacher, the scratch student) and the training loop all stages share.

The teacher, the scratch student and the distilled student (:func:`kd.distill.distill_student`,
built on this module) all go through :func:`fit`, which adds what a production run needs around
``keras.Model.fit``:

- **Augmentation** (random crop from a 4-pixel zero-padded image, horizontal flip) inside the
  compiled training step (:func:`crop_flip`, :func:`training_model`): the host sends the
  batch's uint8 images (on JAX with a GPU, the data sits on the device and the batch is
  gathered there from its indices: :class:`BatchSequence`) plus per-image crop offsets and
  flips drawn from a generator keyed by ``(seed, epoch, batch)``, so the same seed gives the
  same batches, also after a resume. The distiller's teacher and student get the same
  offsets, so they see the same augmented batch.
- **Optimiser and schedule** from the config: SGD with Nesterov momentum (or Adam/AdamW),
  decoupled weight decay, linear warm-up then cosine decay, optional global-norm clipping.
- **A checkpoint every epoch and resume after a kill** (:class:`EpochCheckpoint`, under
  ``<out_dir>/checkpoint``): a rerun with the same config continues from the last completed
  epoch; a checkpoint made with another config is discarded, never mixed in. The epoch is in
  the checkpoint's file name, written atomically after the history, so weights, epoch and
  history always agree (``keras.callbacks.BackupAndRestore`` keeps the epoch in a second file,
  and a kill between the two writes resumes epoch-N weights as epoch N-1).
- **Divergence detection**: a non-finite loss, or validation accuracy at chance from
  ``divergence_check_epoch`` on, stops the run with :class:`kd.errors.DivergenceError`.
- **History** as JSON (``history.json``), early stopping on validation accuracy, progress lines.

Outputs of each stage, in ``out_dir``: the model folder of :mod:`kd.model_folder`
(``model.keras``, ``history.json``, ``info.json``), every file written atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from kd.config import (
    NUM_CLASSES,
    StudentConfig,
    TeacherConfig,
    TrainConfig,
)
from kd.errors import ArtifactError, ConfigError, DivergenceError
from kd.model_folder import HISTORY_FILE, MODEL_FILE, save_outputs
from kd.models import build_model, count_params, fit_whitening
from kd.parallel import active as active_replicas
from kd.parallel import (
    clip_after_all_reduce,
    cluster,
    data_parallel,
    multi_worker_fit,
    replicas,
    seed_checkpoint,
    shard_multiple,
)
from kd.storage import write_text_atomic

if TYPE_CHECKING:
    from kd.distill import TeacherViews

Log = Callable[[str], None]
CHECKPOINT_DIR = "checkpoint"
#: In the checkpoint: the number of devices that trained it (kd.parallel).
DEVICES_FILE = "devices.txt"
# Part of every checkpoint's fingerprint: a checkpoint of another layout (before training
# models had the CropFlip front end) is discarded, not loaded into the wrong variables.
CHECKPOINT_FORMAT = "fit-v3"
EVAL_BATCH = 512  # the largest validation batch
# glibc's M_TOP_PAD (malloc.h), and the padding the training stages ask for (bytes): pad_heap.
_M_TOP_PAD = -2
HEAP_TOP_PAD = 256 << 20


def pad_heap(pad: int = HEAP_TOP_PAD) -> bool:
    """Have glibc's malloc grow and trim its heaps in steps of ``pad`` bytes (``M_TOP_PAD``;
    glibc's default is 128 KiB; setting it also stops glibc from raising its mmap threshold
    on its own). Returns whether glibc took the setting (False where the C library has no
    ``mallopt``, e.g. macOS, or refuses it, e.g. musl; with jemalloc or tcmalloc preloaded it
    returns True and does nothing).

    Why: measured, not derived. On 2 CPU cores the demo's scratch student's epochs took 1.3x
    and 1.9x less time with it in two runs of ``python -m bench.heap``
    (``bench/results/heap-pad-cpu*.json``), with the same numbers out. A step allocates and
    frees its activations every step, and with glibc's defaults that memory goes back to the
    kernel and is taken again (page faults, zeroing); which of glibc's settings matters most
    here is not established. The training stages of :mod:`kd.stages` call it before their
    first TensorFlow op: a first version that set it inside :func:`fit`, after the model was
    built, showed no speedup in that benchmark (not kept as a file). Inference at large
    batches did not change. Process-wide; each malloc heap may keep up to ``pad`` bytes
    resident that it would have returned (not measured). Keras and TensorFlow have no
    allocator setting for this; ``GLIBC_TUNABLES`` would have to be in the environment before
    the process starts, which a library called in-process cannot arrange.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process already uses
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_TOP_PAD, int(pad)) == 1)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Training steps per epoch: full batches only (the last ``n % batch_size`` images of
    each epoch's shuffled order sit that epoch out; a set smaller than one batch is one batch).

    One batch shape means one compiled training step: a partial last batch would compile a
    second one (XLA compiles per shape), which costs as much as the first.
    """
    return max(1, n // batch_size)


def eval_batch_size(n: int, largest: int = EVAL_BATCH, multiple: int = 1) -> int:
    """A validation batch size that splits ``n`` images evenly, so that evaluation compiles
    one step: ``n`` itself up to ``largest``, else the largest divisor of ``n`` in
    [largest/4, largest], else ``largest`` (every image is evaluated either way). With
    ``multiple`` (the devices of a JAX data-parallel run, ``n`` a multiple of it) the batch
    is a multiple of it too."""
    if n <= largest:
        return max(1, n)
    for b in range(largest, largest // 4 - 1, -1):
        if n % b == 0 and b % multiple == 0:
            return b
    return largest - largest % multiple


def shardable_validation(
    val: tuple[np.ndarray, np.ndarray], log: Log, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """The validation split as a JAX data-parallel run can shard it: its first ``len - len
    mod N`` images (at most N - 1 left out, said once), else all of it."""
    m = shard_multiple()
    keep = len(val[0]) - len(val[0]) % m
    if keep == len(val[0]):
        return val
    log(
        f"[{name}] note: validating on {keep} of {len(val[0])} images (a multiple of the "
        f"{m} devices)"
    )
    return val[0][:keep], val[1][:keep]


def draw_augmentation(rng: np.random.Generator, n: int, pad: int = 4) -> np.ndarray:
    """Per-image crop offsets and flips for ``n`` images: int32 (n, 3) rows ``(oy, ox, flip)``.

    ``oy`` and ``ox`` are uniform in [0, 2*pad] (the crop's top-left corner in the padded
    image, pixels), ``flip`` is 1 for a horizontal flip (probability 0.5). Identity is
    ``(pad, pad, 0)``.
    """
    oy = rng.integers(0, 2 * pad + 1, size=(n,))
    ox = rng.integers(0, 2 * pad + 1, size=(n,))
    flip = rng.random(size=(n,)) < 0.5
    return np.stack([oy, ox, flip], axis=1).astype(np.int32)


def identity_augmentation(n: int, pad: int = 4) -> np.ndarray:
    """The ``(oy, ox, flip)`` rows that leave ``n`` images unchanged: ``(pad, pad, 0)``."""
    return np.tile(np.array([[pad, pad, 0]], np.int32), (n, 1))


def augment_batch(x: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """Random crop of a ``pad``-pixel zero-padded image plus a random horizontal flip, in NumPy.

    The reference for :func:`crop_flip` (which training runs on the device): with the same
    generator both give the same images, bit for bit.

    Args:
        x: (N, H, W, C) images (any dtype).
        rng: the generator the offsets and flips are drawn from (:func:`draw_augmentation`).
        pad: padding in pixels on each side (crop offsets are uniform in [0, 2*pad]).

    Returns:
        An array of the same shape and dtype.
    """
    n, h, w, _ = x.shape
    oy, ox, flip = draw_augmentation(rng, n, pad).T.astype(np.intp)
    flip = flip.astype(bool)
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    # Every (h, w) window of every padded image, as a view: (n, 2*pad+1, 2*pad+1, C, h, w).
    windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(1, 2))
    crops = windows[np.arange(n), oy, ox].transpose(0, 2, 3, 1)
    out = np.empty_like(x)
    out[~flip] = crops[~flip]
    out[flip] = crops[flip, :, ::-1]
    return out


#: The blend weight of :func:`blend_images` is in 256ths: w = 256 keeps the first image.
BLEND_ONE = 256


def blend_images(a: Any, b: Any, w: Any, xp: Any = np) -> Any:
    """Mixup of uint8 images in integer arithmetic: ``(w * a + (256 - w) * b + 128) // 256``.

    Why not float: the teacher's cache blends on the host and a step may blend on the device
    (:class:`BatchSequence` ``on_device``); integers give the same bytes on both, so the
    student sees exactly the image the teacher labelled. The result stays in 0..255 (at most
    (256 * 255 + 128) // 256 = 255).

    Args:
        a, b: uint8 (N, H, W, C) images.
        w: int (N,) weights of ``a`` in 256ths, 0..256 (lambda = w / 256).
        xp: the array module, ``numpy`` or ``jax.numpy``.

    Returns:
        uint8 (N, H, W, C).
    """
    w = xp.asarray(w, dtype=xp.int32)[:, None, None, None]
    mixed = w * a.astype(xp.int32) + (BLEND_ONE - w) * b.astype(xp.int32) + BLEND_ONE // 2
    return (mixed // BLEND_ONE).astype(xp.uint8)


def blend_labels(ya: Any, yb: Any, w: Any, xp: Any = np) -> Any:
    """The label of each :func:`blend_images` blend: that of the image with the larger weight
    (``ya`` when ``w >= 128``, i.e. lambda >= 0.5). ``xp``: ``numpy`` or ``jax.numpy``."""
    return xp.where(xp.asarray(w) >= BLEND_ONE // 2, ya, yb)


def crop_flip(images: Any, params: Any, pad: int = 4) -> Any:
    """:func:`augment_batch` as backend ops (``keras.ops``), so it runs inside the compiled step.

    ``out[n, i, j] = x[n, i + oy - pad, j' + ox - pad]`` with ``j' = W-1-j`` if flipped, else
    ``j``; pixels from outside the image are 0 (the zero padding). Built as two batched
    products with 0/1 selection matrices (rows, then columns): each output pixel is one input
    pixel times 1, so the result is exact (no rounding), also under TF32 matmuls.

    Args:
        images: (N, H, W, C) images, any numeric dtype (values 0-255 stay exact).
        params: int (N, 3) rows ``(oy, ox, flip)`` from :func:`draw_augmentation`.
        pad: the padding the offsets were drawn for (pixels).

    Returns:
        float32 (N, H, W, C) images.
    """
    from keras import ops

    x = ops.cast(images, "float32")
    h, w = x.shape[1], x.shape[2]
    params = ops.cast(params, "int32")
    oy, ox, flip = params[:, 0:1] - pad, params[:, 1:2] - pad, params[:, 2:3]
    rows, cols = ops.arange(h, dtype="int32")[None, :], ops.arange(w, dtype="int32")[None, :]
    src_rows = rows + oy  # (N, H): the input row each output row reads
    src_cols = ops.where(flip > 0, (w - 1) - cols, cols) + ox  # (N, W)
    select_rows = ops.cast(ops.equal(src_rows[:, :, None], rows[:, None, :]), "float32")
    select_cols = ops.cast(ops.equal(src_cols[:, :, None], cols[:, None, :]), "float32")
    x = ops.einsum("nij,njkc->nikc", select_rows, x)
    return ops.einsum("nlk,nikc->nilc", select_cols, x)


@keras.saving.register_keras_serializable(package="kd")
class CropFlip(keras.layers.Layer):
    """Applies :func:`crop_flip` to ``[images, params]``; float32 out, no weights."""

    def __init__(self, pad: int = 4, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")  # exact pixels even under mixed precision
        super().__init__(**kwargs)
        self.pad = int(pad)

    def call(self, inputs: Any) -> Any:
        images, params = inputs
        return crop_flip(images, params, self.pad)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return tuple(input_shape[0])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "pad": self.pad}


IMAGE_KEY, AUGMENT_KEY, TEACHER_KEY = "image", "augment", "teacher_logits"


def batch_inputs(image_shape: tuple[int, ...], teacher_logits: bool) -> dict[str, Any]:
    inputs = {
        IMAGE_KEY: keras.Input(image_shape, dtype="uint8", name=IMAGE_KEY),
        AUGMENT_KEY: keras.Input((3,), dtype="int32", name=AUGMENT_KEY),
    }
    if teacher_logits:
        inputs[TEACHER_KEY] = keras.Input((NUM_CLASSES,), dtype="float32", name=TEACHER_KEY)
    return inputs


def training_model(model: Any, pad: int = 4, *, teacher_logits: bool = False) -> Any:
    """``model`` behind a :class:`CropFlip`: inputs ``{"image": uint8 (N,32,32,3),
    "augment": int32 (N,3)}`` (what :class:`BatchSequence` yields), same outputs.

    Training and validation go through it, so the crop and flip run on the device; it shares
    ``model``'s variables, and the stages save ``model`` itself (no augmentation inside).
    With ``teacher_logits`` it also takes (and ignores) the batch's cached teacher logits,
    float32 (N, 10), so that it shares its inputs with :func:`cached_teacher`.
    """
    inputs = batch_inputs(model.input_shape[1:], teacher_logits)
    x = CropFlip(pad, name="crop_flip")([inputs[IMAGE_KEY], inputs[AUGMENT_KEY]])
    return keras.Model(inputs, model(x), name=f"{model.name}_fit")


def _jax_accelerator() -> bool:
    """Whether Keras runs on JAX with an accelerator as JAX's default device."""
    if keras.backend.backend() != "jax":
        return False
    import jax

    return bool(jax.default_backend() != "cpu")


def _device_gather(x: np.ndarray, y: np.ndarray) -> tuple[Any, Any, Any, Any]:
    """``x`` and ``y`` on JAX's default device, a compiled gather of rows from them, and a
    compiled gather of blends (:func:`blend_images`, with the labels of the larger weight)."""
    import jax
    import jax.numpy as jnp

    def take(xs: Any, ys: Any, idx: Any) -> tuple[Any, Any]:
        return xs[idx], ys[idx]

    def take_blend(xs: Any, ys: Any, idx: Any, partner: Any, w: Any) -> tuple[Any, Any]:
        labels = blend_labels(ys[idx], ys[partner], w, jnp)
        return blend_images(xs[idx], xs[partner], w, jnp), labels

    return jax.device_put(x), jax.device_put(y), jax.jit(take), jax.jit(take_blend)


class BatchSequence(keras.utils.PyDataset):
    """Batches of ``({"image": uint8 images, "augment": (oy, ox, flip) rows}, labels)``,
    shuffled per epoch, for a :func:`training_model`; with ``drop_remainder`` only full
    batches (:func:`steps_per_epoch`).

    The host only picks the batch's images and draws the crop offsets and flips (the crop and
    flip run on the device): the order and the augmentation of batch ``i`` in epoch ``e``
    depend only on ``(seed, e, i)``. With ``endless`` (the training split) the sequence has no
    end: request ``k`` is batch ``k mod len`` of epoch ``start_epoch + k // len`` (``fit``
    passes ``steps_per_epoch=len``), so Keras keeps one input iterator across the epochs and
    every batch is a pure function of its request's index. Why not count the requests to
    tell the epoch: under a ``tf.distribute`` strategy Keras peeks at the first batches
    through a prefetching iterator and drops it before training, and that iterator's
    background thread (or any second reader) would move a shared counter at a time that
    depends on the load. Without ``endless`` the sequence is one epoch, ``start_epoch``'s,
    however often it is iterated (validation). ``start_epoch`` is where a resumed run begins.
    Without ``augment`` the rows are the identity ``(pad, pad, 0)``.

    ``on_device`` (default: on the JAX backend with an accelerator) puts the images and labels
    on JAX's default device once, here, and gathers each batch there from the batch's
    indices: a step then moves a few bytes per image to the device instead of its 3,072
    pixels, and the host copies no pixels. The batches are the same bytes either way, and so
    is the training (tested). On JAX's CPU backend there is no copy to save (the gather would
    only move from NumPy into XLA, on the same cores), and on TensorFlow the input pipeline
    wraps the sequence in a ``tf.data`` generator, which would copy device tensors back to
    the host: there the host gathers the batch.

    ``views`` (cached distillation, :func:`kd.distill.cache_teacher_views`): each image's crop
    and flip come from one of its K cached views, drawn per image from ``(seed, e, i)`` (view 0
    when K = 1), and the batch adds that view's teacher logits as ``"teacher_logits"``; with
    ``views.flip_free`` (a flip-invariant teacher) the flip is drawn afresh per use instead.
    A mixed view (``views.mix``, :func:`kd.distill.cache_teacher_views` ``mixup_views``) is
    blended from its image and its partner (:func:`blend_images`), on the device where the
    batch is gathered there, and carries the label of the image with the larger weight.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        *,
        seed: int,
        shuffle: bool,
        augment: bool,
        start_epoch: int = 0,
        pad: int = 4,
        drop_remainder: bool = False,
        on_device: bool | None = None,
        views: TeacherViews | None = None,
        endless: bool = False,
    ) -> None:
        super().__init__()
        self.endless = endless
        if views is not None and views.augment.shape[:1] != (len(x),):
            raise ConfigError(
                f"teacher views cached for {views.augment.shape[0]} images, but the split has "
                f"{len(x)}. Fix: cache them from the same images (cache_teacher_views)"
            )
        self.views = views
        self.drop_remainder = drop_remainder
        self.x, self.y = x, y.astype(np.int32)
        if on_device is None:
            on_device = _jax_accelerator()
        elif on_device and keras.backend.backend() != "jax":
            raise ConfigError(
                f"BatchSequence(on_device=True) needs the JAX backend, not "
                f"{keras.backend.backend()!r}: its input pipeline would copy device arrays "
                "back to the host. Fix: leave on_device unset (it is on for JAX with a GPU)"
            )
        self._device: tuple[Any, Any, Any, Any] | None = None
        if on_device:
            self._device = _device_gather(self.x, self.y)
        self.batch_size, self.seed, self.pad = batch_size, seed, pad
        self.shuffle, self.augment = shuffle, augment
        self.start_epoch = start_epoch
        # The latest epoch's permutation, kept for its batches; a lock, since the input
        # pipeline may call from several threads (an old prefetching iterator among them).
        self._order_lock = threading.Lock()
        self._order: tuple[int, np.ndarray] = (-1, np.arange(len(x)))

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_remainder:
            return steps_per_epoch(len(self.x), self.batch_size)
        return math.ceil(len(self.x) / self.batch_size)

    @property
    def num_batches(self) -> int | None:
        """What Keras iterates: None (no end) for an ``endless`` sequence, else ``len``."""
        return None if self.endless else len(self)

    def _ordering(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return self._order[1]
        with self._order_lock:
            if self._order[0] != epoch:
                order = np.random.default_rng([self.seed, epoch]).permutation(len(self.x))
                self._order = (epoch, order)
            return self._order[1]

    def batch(self, epoch: int, i: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Batch ``i`` of epoch ``epoch`` (pure: depends on nothing requested before)."""
        idx = self._ordering(epoch)[i * self.batch_size : (i + 1) * self.batch_size]
        pick = None
        if self.views is not None:
            k = self.views.count
            rng = np.random.default_rng([self.seed, epoch, i, 2])
            pick = rng.integers(k, size=len(idx)) if k > 1 else np.zeros(len(idx), np.intp)
        if self.views is not None and self.views.mix is not None:
            partner, w = self.views.mix[idx, pick].T
            xb, yb = self._blend(idx, partner, w)
        elif self._device is not None:
            x_dev, y_dev, take, _ = self._device
            xb, yb = take(x_dev, y_dev, idx.astype(np.int32))
        else:
            xb, yb = self.x[idx], self.y[idx]
        if self.views is not None:
            rows = self.views.augment[idx, pick]
            if self.views.flip_free:
                # The teacher's logits are the same for either flip: draw it afresh.
                rows = rows.copy()
                rows[:, 2] = np.random.default_rng([self.seed, epoch, i, 4]).random(len(idx)) < 0.5
            return {
                IMAGE_KEY: xb,
                AUGMENT_KEY: rows,
                TEACHER_KEY: self.views.logits[idx, pick],
            }, yb
        if self.augment:
            params = draw_augmentation(
                np.random.default_rng([self.seed, epoch, i, 1]), len(idx), self.pad
            )
        else:
            params = identity_augmentation(len(idx), self.pad)
        return {IMAGE_KEY: xb, AUGMENT_KEY: params}, yb

    def _blend(self, idx: np.ndarray, partner: np.ndarray, w: np.ndarray) -> tuple[Any, Any]:
        """The images ``idx`` blended with ``partner`` at weights ``w`` (:func:`blend_images`)
        and the labels of the larger weight; on the device with ``on_device``."""
        if self._device is not None:
            x_dev, y_dev, _, take_blend = self._device
            i32 = np.int32
            return take_blend(x_dev, y_dev, idx.astype(i32), partner.astype(i32), w.astype(i32))
        ya, yb = self.y[idx], self.y[partner]
        return blend_images(self.x[idx], self.x[partner], w), blend_labels(ya, yb, w)

    def __getitem__(self, k: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Request ``k``: batch ``k mod len`` of epoch ``start_epoch + k // len``."""
        n = len(self)
        if not self.endless and not 0 <= k < n:
            raise IndexError(f"batch {k} of a sequence of {n}")
        return self.batch(self.start_epoch + k // n, k % n)


def _seed_generators(model: Any) -> list[Any]:
    """Every ``keras.random.SeedGenerator`` the model's layers own (dropout and friends)."""
    found: list[Any] = []
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for value in vars(layer).values():
            if isinstance(value, keras.random.SeedGenerator) and value not in found:
                found.append(value)
    return found


class _Reseed(keras.callbacks.Callback):
    """At each epoch start, re-seed every layer's random generator from ``(seed, epoch)``, so
    that dropout after a resume draws exactly what an uninterrupted run draws."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        for k, gen in enumerate(_seed_generators(self.model)):
            value = int(np.random.default_rng([self.seed, epoch, k]).integers(2**31))
            gen.state.assign(np.array([value, 0], dtype=gen.state.dtype))


class _HistoryAndGuard(keras.callbacks.Callback):
    """Appends each epoch to ``history.json`` (kept across resumes), logs progress, and
    raises DivergenceError on a non-finite loss or chance-level validation accuracy."""

    # Its batch hook only prints a progress line (it reads no logs), so Keras may run it on a
    # helper thread. Without this, any batch hook makes Keras turn each step's logs into
    # Python floats, a device sync per step: on an H200 that left the GPU waiting for the next
    # host-side batch every step.
    async_safe = True

    def __init__(
        self,
        path: Path,
        cfg: TrainConfig,
        name: str,
        steps: int,
        log: Log,
        checkpoint: Callable[[int], None],
    ) -> None:
        super().__init__()
        self.path, self.cfg, self.name, self.steps, self.log = path, cfg, name, steps, log
        self.checkpoint = checkpoint
        self.history: dict[str, list[float]] = {}
        self._t0 = 0.0
        self._every = max(1, steps // 4)

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.path.exists():
            self.history = json.loads(self.path.read_text())
        start = int(getattr(self.model, "_initial_epoch", 0) or 0)
        # Keep only the epochs the restored checkpoint covers.
        self.history = {k: v[:start] for k, v in self.history.items()}
        if start:
            self.log(f"[{self.name}] resuming after epoch {start}/{self.cfg.epochs}")

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._t0 = time.perf_counter()
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if (batch + 1) % self._every == 0 and batch + 1 < self.steps:
            self.log(
                f"[{self.name}] epoch {self._epoch + 1}/{self.cfg.epochs} "
                f"step {batch + 1}/{self.steps}"
            )

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        row: dict[str, float] = {"epoch": epoch + 1}
        for k, v in logs.items():
            row[k] = float(v)
        row["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row["epoch_time_s"] = time.perf_counter() - self._t0
        for k, v in row.items():
            self.history.setdefault(k, []).append(v)
        write_text_atomic(self.path, json.dumps(self.history, indent=1))
        acc, val = row.get("accuracy", float("nan")), row.get("val_accuracy", float("nan"))
        self.log(
            f"[{self.name}] epoch {epoch + 1}/{self.cfg.epochs} loss {row.get('loss', 0):.4f} "
            f"acc {acc:.4f} val_loss {row.get('val_loss', 0):.4f} val_acc {val:.4f} "
            f"lr {row['lr']:.4g} ({row['epoch_time_s']:.1f} s)"
        )
        fix = (
            "Fix: lower learning_rate (e.g. 0.05 for the seed student), set clipnorm (e.g. 2), "
            "or use warmup_epochs >= 2"
        )
        if not math.isfinite(row.get("loss", 0.0)):
            raise DivergenceError(
                f"[{self.name}] training diverged: loss is {row.get('loss')} at epoch "
                f"{epoch + 1}. {fix}"
            )
        check = self.cfg.divergence_check_epoch
        chance = 1.0 / NUM_CLASSES + 0.02
        if check and epoch + 1 >= check and "val_accuracy" in row and val <= chance:
            raise DivergenceError(
                f"[{self.name}] training diverged: validation accuracy {val:.3f} is at chance "
                f"(<= {chance:.2f}) after {epoch + 1} epochs. {fix}; or set "
                "divergence_check_epoch=0 for runs this short"
            )
        self.checkpoint(epoch)


class EpochCheckpoint(keras.callbacks.Callback):
    """Save the model and optimizer state after every epoch as ``epoch-NNNN.weights.h5``
    (temporary name, then rename) and restore the newest one when training starts.

    It restores in ``on_train_begin`` (so it comes first in the callback list); saving is
    :meth:`save`, which the history callback calls once it has written the epoch, so a
    checkpoint never gets ahead of the history.
    """

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder

    def latest(self) -> tuple[int, Path | None]:
        """(epochs completed, file) of the newest checkpoint, or (0, None)."""
        found = sorted(self.folder.glob("epoch-*.weights.h5"))
        if not found:
            return 0, None
        return int(found[-1].name[len("epoch-") : -len(".weights.h5")]), found[-1]

    def on_train_begin(self, logs: dict | None = None) -> None:
        epoch, path = self.latest()
        if path is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(str(path))
        self.model._initial_epoch = epoch  # where Keras's fit loop resumes

    def save(self, epoch: int) -> None:
        """Checkpoint after ``epoch`` (0-based) completed."""
        path = self.folder / f"epoch-{epoch + 1:04d}.weights.h5"
        tmp = self.folder / f".epoch-{epoch + 1:04d}.tmp.weights.h5"
        self.model.save_weights(str(tmp), overwrite=True)
        tmp.replace(path)
        for old in self.folder.glob("epoch-*.weights.h5"):
            if old != path:
                old.unlink()


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int) -> Any:
    """The optimiser and learning-rate schedule the config asks for.

    Cosine: linear warm-up from ``0.01 * lr`` to ``lr`` over ``warmup_epochs``, then cosine
    decay to 0 at the last step. Weight decay is decoupled (``w -= lr_t * wd * w``).
    """
    total = max(1, cfg.epochs * steps_per_epoch)
    lr: Any = cfg.learning_rate
    if cfg.schedule == "cosine":
        warm = min(cfg.warmup_epochs * steps_per_epoch, total - 1)
        if warm > 0:
            lr = keras.optimizers.schedules.CosineDecay(
                initial_learning_rate=cfg.learning_rate * 0.01,
                decay_steps=total - warm,
                warmup_target=cfg.learning_rate,
                warmup_steps=warm,
            )
        else:
            lr = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=total)
    clip = {"global_clipnorm": cfg.clipnorm} if cfg.clipnorm > 0 else {}
    wd = cfg.weight_decay or None
    # The clip sees the global gradient under tf.distribute too (kd.parallel).
    opt = keras.optimizers
    if cfg.optimizer == "sgd":
        return clip_after_all_reduce(opt.SGD)(
            lr, momentum=cfg.momentum, nesterov=True, weight_decay=wd, **clip
        )
    if cfg.optimizer == "adam":
        return clip_after_all_reduce(opt.Adam)(lr, weight_decay=wd, **clip)
    if cfg.optimizer == "adamw":
        return clip_after_all_reduce(opt.AdamW)(lr, weight_decay=cfg.weight_decay, **clip)
    raise ConfigError(f"unknown optimizer {cfg.optimizer!r}: choose sgd, adam or adamw")


def config_fingerprint(cfg: TrainConfig, extra: str) -> str:
    text = json.dumps(
        {
            "format": CHECKPOINT_FORMAT,
            # Not the device count: N devices train as one (kd.parallel); note_devices says so.
            "cfg": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "devices"},
            "type": type(cfg).__name__,
            "extra": extra,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def log_replicas(n: int, batch_size: int, name: str, log: Log) -> None:
    """One progress line when a stage trains on several devices."""
    if n > 1:
        machines = cluster().workers
        log(
            f"[{name}] data-parallel over {n} devices: global batch {batch_size}, "
            f"{batch_size // n} images per device"
            + (f", on {machines} machines" if machines > 1 else "")
        )


def note_devices(ckpt: Path, start: int, log: Log, name: str) -> None:
    """Record in the checkpoint how many devices train it; a resume on another number says
    so (and continues: the global batch, so the training, is the same, see kd.parallel)."""
    stamp = ckpt / DEVICES_FILE
    n = active_replicas()
    if start and stamp.exists() and stamp.read_text().strip() != str(n):
        log(
            f"[{name}] note: resuming on {n} device(s) a run checkpointed on "
            f"{stamp.read_text().strip()}; the global batch is unchanged, so it continues"
        )
    write_text_atomic(stamp, str(n))


def prepare_checkpoint(ckpt: Path, fingerprint: str, log: Log, name: str) -> None:
    stamp = ckpt / "fingerprint.txt"
    if ckpt.exists():
        if stamp.exists() and stamp.read_text() == fingerprint:
            return
        log(f"[{name}] discarding a checkpoint made with another config or data")
        shutil.rmtree(ckpt)
    try:
        ckpt.mkdir(parents=True)
    except OSError as exc:
        raise ArtifactError(
            f"cannot create the output folder {ckpt.parent}: {exc.strerror or exc}. Fix: choose "
            "a writable output location"
        ) from exc
    write_text_atomic(stamp, fingerprint)


def fit(
    model: Any,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    name: str,
    fingerprint_extra: str = "",
    log: Log = print,
    views: tuple[TeacherViews, TeacherViews] | None = None,
) -> dict[str, list[float]]:
    """Train a compiled model (or Distiller) with checkpoints, resume and divergence checks.

    Args:
        model: a compiled :func:`training_model` or a ``keras.distillation.Distiller`` of two
            (inputs as :class:`BatchSequence` yields them).
        train: (x uint8 (N,32,32,3), y (N,)) training split, in full batches of
            ``cfg.batch_size`` (:func:`steps_per_epoch`).
        val: validation split (never augmented; every image evaluated, in batches of
            :func:`eval_batch_size`).
        cfg: the stage's config (epochs, batch size, augmentation, seeds, early stopping).
        out_dir: the stage's output folder; the checkpoint lives in ``out_dir/checkpoint``.
        name: the stage's name in progress lines.
        fingerprint_extra: anything besides ``cfg`` a checkpoint must match (e.g. data hash).
        log: where progress lines go.
        views: cached teacher views of the training and the validation split (a distiller
            from :func:`kd.distill.distill_trainer` with ``cfg.teacher_views``), or None.

    Returns:
        The history: per-epoch lists (``epoch`` 1-based, ``loss``, ``accuracy``,
        ``val_loss``, ``val_accuracy``, ``lr``, ``epoch_time_s``, and for distillation
        ``student_loss`` and ``distillation_loss``), also written to ``out_dir/history.json``
        as the run goes.
    """
    teacher_views = getattr(cfg, "teacher_views", 0)
    if (teacher_views > 0) != (views is not None):
        raise ConfigError(
            f"[{name}] teacher_views={teacher_views} but teacher views were "
            f"{'not ' if views is None else ''}passed to fit. Fix: pass the views of "
            "cache_teacher_views exactly when the config caches the teacher"
        )
    out = Path(out_dir)
    ckpt = out / CHECKPOINT_DIR
    seed_checkpoint(ckpt)  # a non-chief replica of a multi-replica job: the chief's epoch
    prepare_checkpoint(ckpt, config_fingerprint(cfg, fingerprint_extra), log, name)
    saver = EpochCheckpoint(ckpt)
    start = saver.latest()[0]
    note_devices(ckpt, start, log, name)
    train_seq = BatchSequence(
        *train,
        cfg.batch_size,
        seed=cfg.seed,
        shuffle=True,
        augment=cfg.augment,
        start_epoch=start,
        drop_remainder=True,
        views=views[0] if views else None,
        endless=True,
    )
    val_seq = BatchSequence(
        *val,
        eval_batch_size(len(val[0]), multiple=shard_multiple()),
        seed=cfg.seed,
        shuffle=False,
        augment=False,
        views=views[1] if views else None,
    )
    hist = _HistoryAndGuard(ckpt / HISTORY_FILE, cfg, name, len(train_seq), log, saver.save)
    callbacks: list[Any] = [
        saver,  # first: restores before the others start
        _Reseed(cfg.seed),
        hist,  # writes the history, then has the saver checkpoint the epoch
    ]
    if cfg.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_accuracy",
                mode="max",
                patience=cfg.early_stopping_patience,
                restore_best_weights=True,
            )
        )
    # shuffle=False: the sequence shuffles itself, reproducibly; Keras's own batch shuffling
    # would draw from an unseeded source and break resume.
    multi_worker_fit(model).fit(
        train_seq,
        validation_data=val_seq,
        epochs=cfg.epochs,
        steps_per_epoch=len(train_seq),  # the sequence has no end (BatchSequence)
        callbacks=callbacks,
        shuffle=False,
        verbose=0,
    )
    return hist.history


def validate_split(name: str, x: np.ndarray, y: np.ndarray) -> None:
    if len(x) == 0:
        raise ArtifactError(f"the {name} split is empty. Fix: re-run data_split with more data")
    if x.dtype != np.uint8 or x.shape[1:] != (32, 32, 3) or len(x) != len(y):
        raise ArtifactError(
            f"the {name} split has images {x.dtype}{tuple(x.shape)} and {len(y)} labels; "
            "expected uint8 (N,32,32,3) and N labels. Fix: produce it with data_split"
        )


@dataclass
class TrainResult:
    """What a training stage returns: the model, its history and where they were written."""

    model: Any
    history: dict[str, list[float]]
    out_dir: Path
    info: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return self.out_dir / MODEL_FILE


def hard_loss(label_smoothing: float = 0.0) -> keras.losses.Loss:
    """Cross-entropy of integer labels against logits, with optional label smoothing."""
    if label_smoothing == 0.0:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return SmoothedSparseCrossentropy(label_smoothing)


@keras.saving.register_keras_serializable(package="kd")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Sparse cross-entropy on logits with label smoothing (Keras's sparse loss has none).

    Targets are ``(1 - eps) * onehot(y) + eps / C`` with ``eps = label_smoothing``, C = 10.
    """

    def __init__(
        self, label_smoothing: float = 0.1, name: str = "smoothed_sparse_ce", **kwargs: Any
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        onehot = keras.ops.one_hot(
            keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), NUM_CLASSES
        )
        return keras.losses.categorical_crossentropy(
            onehot, y_pred, from_logits=True, label_smoothing=self.label_smoothing
        )

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def finish_stage(
    model: Any,
    history: dict[str, list[float]],
    out_dir: Path,
    cfg: TrainConfig,
    role: str,
    stage: str,
    extra: dict[str, Any] | None = None,
) -> TrainResult:
    val = history.get("val_accuracy", [])
    info = {
        "stage": stage,
        "preset": cfg.preset,
        "role": role,
        "architecture": model.name,
        "parameters": count_params(model),
        "framework": f"keras-{keras.__version__}/{keras.backend.backend()}",
        "epochs_run": len(history.get("epoch", [])),
        "best_val_accuracy": max(val) if val else None,
        "best_epoch": int(np.argmax(val)) + 1 if val else None,
        "final_val_accuracy": val[-1] if val else None,
        "config": dataclasses.asdict(cfg),
        **(extra or {}),
    }
    save_outputs(model, out_dir, history, info)
    shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)
    return TrainResult(model=model, history=history, out_dir=out_dir, info=info)


def data_fingerprint(train: tuple[np.ndarray, np.ndarray]) -> str:
    x, y = train
    h = hashlib.sha256()
    h.update(str(x.shape).encode())
    h.update(np.ascontiguousarray(x[:: max(1, len(x) // 64)]).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()


def xla(cfg: TrainConfig) -> bool | str:
    """``keras.Model.compile``'s ``jit_compile`` for ``cfg``: its ``jit_compile`` on
    TensorFlow; Keras' ``"auto"`` elsewhere (JAX compiles every step; False would run it
    eagerly)."""
    return cfg.jit_compile if keras.backend.backend() == "tensorflow" else "auto"


def supervised_trainer(
    cfg: TrainConfig,
    role: str,
    steps: int,
    images: np.ndarray | None = None,
) -> tuple[Any, Any]:
    """The ``role`` model of ``cfg.preset`` and its compiled :func:`training_model` (hard-label
    loss, the config's optimizer and schedule over ``steps`` steps per epoch). A model with a
    patch-whitening layer (the ``fast`` teacher) has it fitted to ``images``, the training
    images (:func:`kd.models.fit_whitening`). ``cfg.jit_compile`` compiles the step with XLA."""
    model = build_model(cfg.preset, role, seed=cfg.seed, mixed_precision=cfg.mixed_precision)
    if images is not None:
        fit_whitening(model, images)
    keras.utils.set_random_seed(cfg.seed)
    trainer = training_model(model)
    trainer.compile(
        optimizer=make_optimizer(cfg, steps),
        loss=hard_loss(cfg.label_smoothing),
        metrics=["accuracy"],
        jit_compile=xla(cfg),
    )
    return model, trainer


def train_supervised(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    role: str,
    stage: str,
    log: Log = print,
) -> TrainResult:
    """Train the ``role`` model of ``cfg.preset`` on hard labels (teacher or scratch student).

    Loss: cross-entropy of the labels against the logits (label-smoothed if configured).
    """
    validate_split("train", *train)
    validate_split("validation", *val)
    out = Path(out_dir)
    steps = steps_per_epoch(len(train[0]), cfg.batch_size)
    n = replicas(cfg.devices, cfg.batch_size, stage)
    with data_parallel(n):
        log_replicas(n, cfg.batch_size, stage, log)
        val = shardable_validation(val, log, stage)
        model, trainer = supervised_trainer(cfg, role, steps, images=train[0])
        history = fit(
            trainer,
            train,
            val,
            cfg,
            out,
            name=stage,
            fingerprint_extra=data_fingerprint(train),
            log=log,
        )
        return finish_stage(model, history, out, cfg, role, stage)


def train_teacher(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    cfg: TeacherConfig,
    out_dir: str | Path,
    log: Log = print,
) -> TrainResult:
    """Train the teacher of ``cfg.preset``; writes ``model.keras`` etc. into ``out_dir``."""
    return train_supervised(
        train, val, cfg, out_dir, role="teacher", stage="train_teacher", log=log
    )


def train_student_scratch(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    cfg: StudentConfig,
    out_dir: str | Path,
    log: Log = print,
) -> TrainResult:
    """Train the student of ``cfg.preset`` from scratch on hard labels (the baseline)."""
    return train_supervised(
        train, val, cfg, out_dir, role="student", stage="train_student_scratch", log=log
    )
