"""Model presets: a teacher and a student builder per preset name.

Every model takes raw RGB images of shape (32, 32, 3) with values 0-255 (uint8 or float) and
returns 10 **logits**. The preprocessing (per-channel standardisation with fixed CIFAR-10
statistics) is the model's first layer, so a saved model needs nothing else to predict or
serve, and training, evaluation, ``predict`` and the SavedModel export all see the same input.

Presets:

- ``seed``: the notebook's architectures, exactly. Teacher: conv 64-64 / 128-128 / 256-256
  (3x3, same padding, ReLU; BatchNorm after the first conv of each block; 2x2 max-pool;
  dropout 0.2/0.3/0.4), dense 512, dropout 0.5, 10 logits: 3,249,098 trainable parameters.
  Student: conv 32, max-pool, conv 64, max-pool, dense 128, 10 logits: 545,098 parameters.
- ``resnet``: CIFAR ResNets (He et al., 2016). Teacher: ResNet-20 with widths 64/128/256 and
  1x1 projection shortcuts (about 4.3 M parameters). Student: the classic ResNet-20 (widths
  16/32/64, parameter-free "option A" shortcuts), under half the seed student's parameters.
- ``fast``: a teacher built to train well in few epochs on a CPU, after airbench (Keller
  Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024): a frozen 2x2
  patch-whitening convolution fitted to the training images (:func:`fit_whitening`), then
  three conv groups of widths 64/256/256 (conv, max-pool, BatchNorm, GELU, conv, BatchNorm,
  GELU; the BatchNorms without scale), global max-pool, bias-free logits times 1/9:
  1,971,328 trainable parameters, about 0.12 GMAC per image (the seed teacher: 0.16 GMAC).
  :func:`flip_tta` wraps a trained model with flip test-time augmentation (the shipped teacher
  has it). Its student is the seed student, so the shipped teacher (``kd/teachers/``) teaches
  the demo's student.

Add a preset by writing two builders and registering them in :data:`BUILDERS`
(and its name in :data:`kd.config.PRESETS`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kd.config import IMAGE_SHAPE, NUM_CLASSES, PRESETS
from kd.errors import ConfigError

# Per-channel mean and standard deviation of the CIFAR-10 training set, on the 0-255 scale.
CIFAR_MEAN = (125.3, 123.0, 113.9)
CIFAR_STD = (63.0, 62.1, 66.7)

ROLES = ("teacher", "student")


def _preprocess(inputs: Any) -> Any:
    import keras

    return keras.layers.Normalization(
        mean=list(CIFAR_MEAN),
        variance=[s * s for s in CIFAR_STD],
        name="standardize",
    )(inputs)


def _head(x: Any) -> Any:
    import keras

    # Logits in float32 even under a mixed-precision policy.
    return keras.layers.Dense(NUM_CLASSES, dtype="float32", name="logits")(x)


def seed_teacher() -> Any:
    """The notebook's teacher: 3,249,098 trainable parameters."""
    import keras
    from keras import layers

    inputs = keras.Input(IMAGE_SHAPE, name="image")
    x = _preprocess(inputs)
    for i, (filters, drop) in enumerate(((64, 0.2), (128, 0.3), (256, 0.4)), start=1):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"b{i}_conv1")(x)
        x = layers.BatchNormalization(name=f"b{i}_bn")(x)
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"b{i}_conv2")(x)
        x = layers.MaxPooling2D(2, name=f"b{i}_pool")(x)
        x = layers.Dropout(drop, name=f"b{i}_drop")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(512, activation="relu", name="fc")(x)
    x = layers.Dropout(0.5, name="fc_drop")(x)
    return keras.Model(inputs, _head(x), name="seed_teacher")


def seed_student() -> Any:
    """The notebook's student: 545,098 trainable parameters, no BatchNorm."""
    import keras
    from keras import layers

    inputs = keras.Input(IMAGE_SHAPE, name="image")
    x = _preprocess(inputs)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="fc")(x)
    return keras.Model(inputs, _head(x), name="seed_student")


def fast_teacher() -> Any:
    """The ``fast`` teacher (airbench-style, 1,971,328 trainable parameters).

    The ``whiten`` layer's 24 filters are placeholders until :func:`fit_whitening` sets them
    from the training images; the layer is frozen (airbench freezes its weights too). As in
    airbench, the BatchNorms have no scale (only a shift: a following GELU sees a unit-variance
    input), and the logits are a bias-free linear map of the pooled features times 1/9: that
    factor divides the head's effective learning rate by 81, which is what lets the rest of
    the net train at airbench's high learning rate (:func:`kd.config.shipped_teacher_config`).
    """
    import keras
    from keras import layers

    def bn(name: str) -> Any:
        return layers.BatchNormalization(momentum=0.9, epsilon=1e-5, scale=False, name=name)

    inputs = keras.Input(IMAGE_SHAPE, name="image")
    x = _preprocess(inputs)
    x = layers.Conv2D(WHITEN_FILTERS, 2, padding="valid", name=WHITEN_LAYER, trainable=False)(x)
    x = layers.Activation("gelu", name="whiten_act")(x)
    for i, filters in enumerate((64, 256, 256), start=1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"g{i}_conv1")(x)
        x = layers.MaxPooling2D(2, name=f"g{i}_pool")(x)
        x = bn(f"g{i}_bn1")(x)
        x = layers.Activation("gelu", name=f"g{i}_act1")(x)
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"g{i}_conv2")(x)
        x = bn(f"g{i}_bn2")(x)
        x = layers.Activation("gelu", name=f"g{i}_act2")(x)
    x = layers.GlobalMaxPooling2D(name="gmp")(x)
    x = layers.Dense(NUM_CLASSES, use_bias=False, dtype="float32", name="fc")(x)
    logits = layers.Rescaling(1 / 9, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name="fast_teacher")


def flip_tta(model: Any) -> Any:
    """``model`` with flip test-time augmentation: logits = (f(x) + f(mirror(x))) / 2.

    ``mirror`` reverses the image's columns. It is written with built-in layers only (a
    Permute, a frozen 32x32 anti-identity Dense over the width axis, a Permute back; exact on
    0-255 values) so that the wrapped model still loads with ``safe_mode=True`` and without
    this package; Keras has no deterministic flip layer (``RandomFlip`` is the identity at
    inference). Doubles the inference cost; the training graph is untouched.
    """
    import keras
    import numpy as np
    from keras import layers

    h, w, _ = IMAGE_SHAPE
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    cols = layers.Permute((1, 3, 2), name="to_columns")(inputs)  # B, H, C, W
    mirror_cols = layers.Dense(w, use_bias=False, trainable=False, name="mirror")
    mirrored = layers.Permute((1, 3, 2), name="from_columns")(mirror_cols(cols))
    mirror_cols.set_weights([np.eye(w, dtype="float32")[::-1].copy()])
    avg = layers.Average(name="logits")([model(inputs), model(mirrored)])
    return keras.Model(inputs, avg, name=f"{model.name}_flip_tta")


WHITEN_LAYER = "whiten"
WHITEN_FILTERS = 24  # the 12 whitening directions of a 2x2x3 patch, each with both signs


def fit_whitening(model: Any, images: Any, *, max_images: int = 5000, eps: float = 5e-4) -> bool:
    """Set a model's ``whiten`` layer to the PCA whitening of its 2x2 input patches.

    With ``P`` the (M, 12) matrix of every 2x2x3 patch of the standardised images and
    ``C = cov(P) = V diag(lambda) V^T``, filter ``k`` is ``V[:, k] / sqrt(lambda_k + eps)``
    and filter ``k + 12`` its negative (so GELU keeps both signs), bias 0: each output channel
    is a patch's coordinate along one principal direction, in units of that direction's
    standard deviation. Written here (not a library call): Keras has no patch-whitening layer.

    Args:
        model: a model; nothing happens when it has no layer named ``whiten``.
        images: uint8 (N, 32, 32, 3) training images (never test images); the first
            ``max_images`` are used.
        max_images: the most images the covariance is estimated from.
        eps: added to each eigenvalue (variance, in standardised units squared).

    Returns:
        True when a ``whiten`` layer was set.
    """
    import numpy as np

    names = {layer.name for layer in model.layers}
    if WHITEN_LAYER not in names:
        return False
    x = np.asarray(images[:max_images], np.float64)
    x = (x - np.array(CIFAR_MEAN)) / np.array(CIFAR_STD)
    # Every 2x2 patch, flattened in the kernel's (row, column, channel) order.
    win = np.lib.stride_tricks.sliding_window_view(x, (2, 2), axis=(1, 2))  # N,31,31,C,2,2
    patches = win.transpose(0, 1, 2, 4, 5, 3).reshape(-1, 12)
    cov = np.cov(patches, rowvar=False)
    lam, vec = np.linalg.eigh(cov)
    w = vec / np.sqrt(lam + eps)  # (12, 12): column k is filter k
    kernel = np.concatenate([w, -w], axis=1).reshape(2, 2, 3, WHITEN_FILTERS)
    layer = model.get_layer(WHITEN_LAYER)
    layer.set_weights([kernel.astype("float32"), np.zeros(WHITEN_FILTERS, "float32")])
    return True


def _resnet(widths: tuple[int, int, int], blocks: int, projection: bool, name: str) -> Any:
    """A CIFAR ResNet with ``3 * blocks`` basic blocks (depth ``6 * blocks + 2``).

    Args:
        widths: filters of the three stages (the stem has ``widths[0]``).
        blocks: basic blocks per stage.
        projection: 1x1 conv + BN shortcuts where the shape changes; otherwise the
            parameter-free "option A" shortcut (stride-2 subsampling, zero channels appended).
        name: model name.
    """
    import keras
    from keras import layers

    def conv(f: int, s: int, n: str) -> Any:
        return layers.Conv2D(
            f,
            3,
            strides=s,
            padding="same",
            use_bias=False,
            kernel_initializer="he_normal",
            name=n,
        )

    inputs = keras.Input(IMAGE_SHAPE, name="image")
    x = _preprocess(inputs)
    x = conv(widths[0], 1, "stem_conv")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    in_f = widths[0]
    for stage, f in enumerate(widths, start=1):
        for b in range(blocks):
            s = 2 if (stage > 1 and b == 0) else 1
            p = f"s{stage}b{b}"
            y = conv(f, s, f"{p}_conv1")(x)
            y = layers.BatchNormalization(name=f"{p}_bn1")(y)
            y = layers.ReLU(name=f"{p}_relu1")(y)
            y = conv(f, 1, f"{p}_conv2")(y)
            y = layers.BatchNormalization(name=f"{p}_bn2")(y)
            shortcut = x
            if s != 1 or in_f != f:
                if projection:
                    shortcut = layers.Conv2D(f, 1, strides=s, use_bias=False, name=f"{p}_proj")(x)
                    shortcut = layers.BatchNormalization(name=f"{p}_proj_bn")(shortcut)
                else:
                    shortcut = layers.MaxPooling2D(1, strides=s, name=f"{p}_sub")(x)
                    zeros = layers.Rescaling(0.0, name=f"{p}_zeros")(shortcut)
                    pads = [zeros] * ((f - in_f) // in_f)
                    shortcut = layers.Concatenate(name=f"{p}_pad")([shortcut, *pads])
            x = layers.Add(name=f"{p}_add")([y, shortcut])
            x = layers.ReLU(name=f"{p}_out")(x)
            in_f = f
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, _head(x), name=name)


def resnet_teacher() -> Any:
    """ResNet-20, widths 64/128/256, projection shortcuts (about 4.3 M parameters)."""
    return _resnet((64, 128, 256), 3, projection=True, name="resnet_teacher")


def resnet_student() -> Any:
    """The classic ResNet-20 (widths 16/32/64, option-A shortcuts), under 272,549 parameters."""
    return _resnet((16, 32, 64), 3, projection=False, name="resnet_student")


BUILDERS: dict[str, dict[str, Callable[[], Any]]] = {
    "seed": {"teacher": seed_teacher, "student": seed_student},
    "resnet": {"teacher": resnet_teacher, "student": resnet_student},
    "fast": {"teacher": fast_teacher, "student": seed_student},
}


def build_model(preset: str, role: str, *, seed: int = 42, mixed_precision: bool = False) -> Any:
    """Build the ``role`` model of ``preset`` with weights initialised from ``seed``.

    The distilled and the scratch student both come from this function with the same preset
    and seed, so they start from identical weights.

    Args:
        preset: a name in :data:`kd.config.PRESETS`.
        role: ``teacher`` or ``student``.
        seed: seed of the weight initialisation (Python, NumPy and the Keras backend).
        mixed_precision: build under the ``mixed_bfloat16`` policy (logits stay float32).

    Returns:
        An uncompiled ``keras.Model`` mapping (N, 32, 32, 3) images in 0-255 to (N, 10) logits.
    """
    if preset not in PRESETS or preset not in BUILDERS:
        raise ConfigError(f"unknown preset {preset!r}: choose one of {', '.join(BUILDERS)}")
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}: choose teacher or student")
    import keras

    keras.utils.set_random_seed(seed)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16" if mixed_precision else "float32")
    try:
        return BUILDERS[preset][role]()
    finally:
        keras.config.set_dtype_policy(previous)


def count_params(model: Any) -> dict[str, int]:
    """Trainable, non-trainable and total parameter counts of a Keras model."""
    trainable = int(sum(int(w.numpy().size) for w in model.trainable_weights))
    non_trainable = int(sum(int(w.numpy().size) for w in model.non_trainable_weights))
    return {
        "trainable": trainable,
        "non_trainable": non_trainable,
        "total": trainable + non_trainable,
    }
