"""Teacher inference speed, float32 against mixed_bfloat16, on this CPU (session 18 probe).

    .venv/bin/python bench/results/s18/teacher_bf16_probe.py

Times the shipped teacher (flip TTA: two passes an image) on 2,048 random images in batches of
256, best of 3, then the same weights rebuilt under the ``mixed_bfloat16`` policy. Prints the
first layers' policies (to show the rebuild took) and a JSON line of the results.
"""

import json
import time

import keras
import numpy as np

from kd.models import build_model, flip_tta
from kd.teacher import shipped_teacher_path

x = np.random.default_rng(0).integers(0, 256, (2048, 32, 32, 3)).astype(np.float32)


def bench(model, bs=256, reps=3):
    """Best milliseconds per image over ``reps`` passes of ``x``, and the last logits."""
    model.predict_on_batch(x[:bs])
    best, outs = 1e9, []
    for _ in range(reps):
        t = time.perf_counter()
        outs = [np.asarray(model.predict_on_batch(x[i : i + bs])) for i in range(0, len(x), bs)]
        best = min(best, time.perf_counter() - t)
    return best / len(x) * 1000, np.concatenate(outs)


shipped = keras.saving.load_model(str(shipped_teacher_path()), safe_mode=True)
res = {}
res["float32_ms_per_image"], ref = bench(shipped)
inner = build_model("fast", "teacher", mixed_precision=True)
nets = [layer for layer in shipped.layers if isinstance(layer, keras.Model)]
inner.set_weights((nets[0] if nets else shipped).get_weights())
print({layer.name: layer.dtype_policy.name for layer in inner.layers[:6]})
res["bf16_ms_per_image"], out = bench(flip_tta(inner))
res["argmax_agreement"] = float((out.argmax(1) == ref.argmax(1)).mean())
res["max_abs_logit_diff"] = float(np.abs(out - ref).max())
print(json.dumps(res, indent=1))
