#!/usr/bin/env bash
# The GPU measurements of docs/RESULTS.md, as run through the device tool on one H200
# (JAX backend; Keras travels as wheels in .whl/; the data as two lossless parts, see
# bench/device_data.py). Phases, each one call (files under /root stay while the machine is warm):
#   bash bench/gpu_session.sh setup      # wheels -> /root/site, part 1 -> /root/chunks, GPU info
#   bash bench/gpu_session.sh speed      # bench.gpu_speed: seed preset, float32 and bfloat16
#   PLAN="float32 50 30" bash bench/gpu_session.sh accuracy
#                         # part 2, unpack + SHA-256 check, then at once on the one GPU: preset
#                         # seed, 3 seeds, 50 epochs; preset resnet, 1 seed, 30 epochs (0: none)
#   bash bench/gpu_session.sh pack       # /root/res -> $OUT/res.tar.gz
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
  plan=${PLAN:?set PLAN="PRECISION SEED_EPOCHS RESNET_EPOCHS", e.g. PLAN="float32 50 30"}
  if [ -f .cifarw2/part-1.npz ]; then cp .cifarw2/part-1.npz /root/chunks/; fi
  python3 -m bench.device_data unpack --parts /root/chunks/part-*.npz --out /root/cifar10
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
