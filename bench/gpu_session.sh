#!/usr/bin/env bash
# The GPU measurements of docs/RESULTS.md, as run through the device tool on one H200
# (JAX backend; Keras travels as wheels in .whl/; the data as two lossless parts, see
# bench/device_data.py). Phases, each one call (files under /root stay while the machine is warm):
#   bash bench/gpu_session.sh setup      # wheels -> /root/site, part 1 -> /root/chunks, GPU info
#   bash bench/gpu_session.sh speed      # bench.gpu_speed: seed preset, float32 and bfloat16
#   bash bench/gpu_session.sh accuracy W # part 2, unpack + SHA-256 check, accuracy runs sized
#                                        # to W seconds of wall time
# Results go to /root/res and, packed, to $OUT.
set -euo pipefail
export PYTHONPATH=/root/site${PYTHONPATH:+:$PYTHONPATH} KERAS_BACKEND=jax PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=/root/jax-cache
OUT=${OUT:-/tmp/out}
mkdir -p /root/res "$OUT"
case "$1" in
setup)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /root/site .whl/*.whl
  mkdir -p /root/chunks
  if [ -f .cifarw1/part-0.npz ]; then cp .cifarw1/part-0.npz /root/chunks/; fi
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)"
  ;;
speed)
  # 40,000 + 10,000 images: the real split's sizes, so the accuracy runs reuse the compiled
  # steps from the cache; the shipped sample repeated (speed does not depend on the pixels).
  python3 -m bench.gpu_speed --data sample --train-images "${SPEED_TRAIN:-40000}" \
    --val-images "${SPEED_VAL:-10000}" --epochs 3 --batch-size 256 --out /root/res/gpu-speed.json 2>&1 | tee /root/res/gpu-speed.log \
    | grep -v "step [0-9]*/"
  cp /root/res/gpu-speed.json "$OUT/"
  ;;
accuracy)
  window=${2:?give the wall-time window in seconds}
  if [ -f .cifarw2/part-1.npz ]; then cp .cifarw2/part-1.npz /root/chunks/; fi
  python3 -m bench.device_data unpack --parts /root/chunks/part-*.npz --out /root/cifar10
  plan=${PLAN:-}
  [ -n "$plan" ] || plan=$(python3 - "$window" <<'PY'
import json, sys
w = float(sys.argv[1])
s = json.load(open("/root/res/gpu-speed.json"))["precisions"]
def proj(p, e):  # one seed-preset run alone: first epoch + (e - 1) x steady, three stages
    return sum(s[p][k]["first_epoch_s"] + (e - 1) * s[p][k]["steady_epoch_s"]
               for k in ("teacher", "scratch", "distill"))
prec = "float32"
if "bfloat16" in s and proj("bfloat16", 60) * 1.15 < proj("float32", 60):
    prec = "bfloat16"
# Three seed-preset runs share the GPU; assume 80 % of a lone run's time is GPU work. The
# resnet preset costs about 3x a seed-preset run (FLOP-weighted, its students are deeper).
train_w = w - 60  # unpack, evaluation, report and packing
seed_e = next((e for e in (60, 50, 40, 30, 20) if 3 * 0.8 * proj(prec, e) <= 0.7 * train_w), 15)
left = train_w - 3 * 0.8 * proj(prec, seed_e)
res_e = next((e for e in (60, 50, 40, 30, 20) if 0.8 * 3 * proj(prec, e) <= left), 0)
print(prec, seed_e, res_e)
PY
)
  read -r prec seed_e res_e <<<"$plan"
  flag=""; [ "$prec" = bfloat16 ] && flag="--mixed-precision"
  echo "plan: precision $prec, seed preset $seed_e epochs x 3 seeds, resnet $res_e epochs x 1 seed"
  echo "$plan" > /root/res/plan.txt
  export XLA_PYTHON_CLIENT_MEM_FRACTION=0.18  # four runs and their parent share the GPU
  # shellcheck disable=SC2206  # ACC_EXTRA: extra arguments for a local dry run
  common=(--data /root/cifar10 --batch-size 256 $flag --reports /root/res/reports ${ACC_EXTRA:-})
  python3 -m bench.accuracy "${common[@]}" --preset seed --seeds 0 1 2 --jobs 3 \
    --teacher-epochs "$seed_e" --student-epochs "$seed_e" \
    --out /root/res/accuracy-seed-gpu.json > /root/res/seed.log 2>&1 &
  if [ "$res_e" -gt 0 ]; then
    python3 -m bench.accuracy "${common[@]}" --preset resnet \
      --seeds 0 --teacher-epochs "$res_e" --student-epochs "$res_e" \
      --out /root/res/accuracy-resnet-gpu.json > /root/res/resnet.log 2>&1 &
  fi
  wait
  cat /root/res/seed.log /root/res/resnet.log 2>/dev/null | grep -v "step [0-9]*/" | tail -40
  ;;
pack)
  tar -czf "$OUT/res.tar.gz" -C /root res
  ls -la "$OUT"
  ;;
esac
