#!/usr/bin/env bash
# The GPU measurements of docs/RESULTS.md, as run through the device tool on one H200
# (JAX backend; Keras travels as wheels in .whl/; the data as two lossless parts, see
# bench/device_data.py). Phases, one or two per call (files under /root stay while the machine
# is warm):
#   bash bench/gpu_session.sh setup      # wheels -> /root/site, part 1 -> /root/chunks, GPU info
#   bash bench/gpu_session.sh speed      # bench.gpu_speed: seed preset in float32 and bfloat16,
#                                        # resnet preset in bfloat16 (3 epochs a stage)
#                                        # (SPEED_PRECISIONS="float32" and SPEED_RESNET=0
#                                        # keep it to the seed preset in float32)
#   bash bench/gpu_session.sh autotune   # the same, float32, XLA's GPU autotuning at
#                                        # AUTOTUNE_LEVEL (0, off): compile vs step time
#   bash bench/gpu_session.sh inputs     # bench.gpu_speed, seed preset, float32, with the
#                                        # batches gathered on the host (the input path before
#                                        # session 4): against `speed`'s float32 run, what
#                                        # gathering them on the device saves
#   bash bench/gpu_session.sh steps      # bench.step_time: a training step through fit, as a
#                                        # jitted loop and as a scan of 8, per stage and for the
#                                        # host stand-in, with profiler traces of 20 steps
#                                        # (read here: python -m bench.trace_summary) and each
#                                        # stage's per-epoch checkpoint save; not yet run on a
#                                        # GPU
#   bash bench/gpu_session.sh data       # part 2, unpack + SHA-256 check -> /root/cifar10
#   bash bench/gpu_session.sh wall       # the three trainings of the seed preset, 60 epochs,
#                                        # bfloat16, alone on the GPU, teacher and scratch at
#                                        # once, no compilation cache: wall time and accuracy
#   DEADLINE=EPOCH_S bash bench/gpu_session.sh accuracy
#                         # at once on the one GPU: seed preset, 3 seeds, SEED_EPOCHS (60;
#                         # 0 skips it);
#                         # resnet at the most epochs that fit before DEADLINE
#                         # (bench/plan_epochs.py, from the speeds measured above, else the
#                         # committed H200 ones): 3 seeds
#                         # if that is >= RESNET_MIN_EPOCHS (80), else 1 seed for longer
#                         # (a short schedule would only repeat the 30-epoch result); its
#                         # students (BatchNorm) at peak lr RESNET_STUDENT_LR (0.1). SHARING
#                         # (1.0, the safe bound) scales the plan's sum of lone-run times;
#                         # session 3 measured 0.48 for three seed-preset runs at once;
#                         # SEED_VIEWS (e.g. "4 8") adds one distillation from cached teacher
#                         # logits per K to each seed-preset run (bench.accuracy
#                         # --teacher-views; about one more distillation each, not planned for)
#   bash bench/gpu_session.sh pack       # /root/res -> $OUT/res.tar.gz (+ traces.tar.gz)
# Results go to /root/res and, packed, to $OUT.
set -euo pipefail
export PYTHONPATH=/root/site${PYTHONPATH:+:$PYTHONPATH} KERAS_BACKEND=jax PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p /root/res "$OUT"
quiet() { grep -v "step [0-9]*/" || true; }
# bench.gpu_speed on 40,000 + 10,000 images (the real split's sizes; the shipped sample
# repeated: speed does not depend on the pixels), 3 epochs a stage, batch 256; each run
# compiles afresh (no persistent compilation cache). speed_run NAME [ARGS]: the results in
# /root/res/NAME.json, also copied to $OUT.
speed_run() {
  local name=$1
  shift
  python3 -m bench.gpu_speed --data sample --train-images "${SPEED_TRAIN:-40000}" \
    --val-images "${SPEED_VAL:-10000}" --epochs 3 --batch-size 256 "$@" \
    --out "/root/res/$name.json" 2>&1 | tee "/root/res/$name.log" | quiet
  cp "/root/res/$name.json" "$OUT/"
}
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
  # shellcheck disable=SC2086  # SPEED_PRECISIONS: a list
  speed_run gpu-speed --precisions ${SPEED_PRECISIONS:-float32 bfloat16}
  if [ "${SPEED_RESNET:-1}" = 1 ]; then
    speed_run gpu-speed-resnet --preset resnet --precisions bfloat16
  fi
  ;;
autotune)
  # XLA's GPU autotuning (it times candidate kernels while compiling) at AUTOTUNE_LEVEL (0:
  # off; XLA's default is 4): compile time against step time, seed preset, float32.
  XLA_FLAGS="--xla_gpu_autotune_level=${AUTOTUNE_LEVEL:-0}" \
    speed_run "gpu-speed-autotune${AUTOTUNE_LEVEL:-0}" --precisions float32
  ;;
inputs)
  speed_run gpu-speed-host-batches --precisions float32 --host-batches
  ;;
steps)
  # shellcheck disable=SC2086  # STEPS_EXTRA: extra arguments for a local dry run
  python3 -m bench.step_time --trace /root/res/traces ${STEPS_EXTRA:-} \
    --out /root/res/step-time.json 2>&1 | tee /root/res/step-time.log
  cp /root/res/step-time.json "$OUT/"
  ;;
data)
  if [ -f .cifarw2/part-1.npz ]; then cp .cifarw2/part-1.npz /root/chunks/; fi
  python3 -m bench.device_data unpack --parts /root/chunks/part-*.npz --out /root/cifar10
  ;;
wall)
  # Alone on the GPU; the scratch student's process and the teacher's share it.
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.3 python3 -m bench.accuracy --data /root/cifar10 \
    --preset seed --seeds 0 --teacher-epochs "${WALL_EPOCHS:-60}" \
    --student-epochs "${WALL_EPOCHS:-60}" --batch-size 256 --mixed-precision \
    --parallel-stages ${ACC_EXTRA:-} --out /root/res/wall-seed.json 2>&1 \
    | tee /root/res/wall.log | quiet | tail -5
  cp /root/res/wall-seed.json "$OUT/"
  ;;
accuracy)
  export JAX_COMPILATION_CACHE_DIR=/root/jax-cache  # the seeds of a preset compile once
  # Speeds for the plan: this session's `speed` phase, else the committed H200 figures.
  speeds=/root/res  # needs both presets, the seed preset's in bfloat16
  if [ ! -f /root/res/gpu-speed-resnet.json ] \
    || ! grep -q '"bfloat16"' /root/res/gpu-speed.json 2>/dev/null; then
    speeds=bench/results/h200
  fi
  seed_e=${SEED_EPOCHS:-60}
  seconds=$(( ${DEADLINE:?set DEADLINE, the epoch second the runs must end by} - $(date +%s) - 20 ))
  plan() {
    python3 -m bench.plan_epochs --precision bfloat16 --seconds "$seconds" --seeds 3 \
      --sharing "${SHARING:-1.0}" \
      --speed seed="$speeds/gpu-speed.json" --speed resnet="$speeds/gpu-speed-resnet.json" \
      --fixed seed="$seed_e" --fill resnet --fill-seeds "$1" | cut -d" " -f2
  }
  res_seeds=(0 1 2)
  res_e=$(plan 3)
  if [ "$res_e" -lt "${RESNET_MIN_EPOCHS:-80}" ]; then res_seeds=(0); res_e=$(plan 1); fi
  echo "plan: ${seconds} s: seed preset 3 seeds x ${seed_e} epochs;" \
    "resnet ${#res_seeds[@]} seed(s) x ${res_e} epochs"
  echo "$seconds seed 3x$seed_e resnet ${#res_seeds[@]}x$res_e" > /root/res/plan.txt
  # shellcheck disable=SC2206  # ACC_EXTRA: extra arguments for a local dry run
  common=(--data /root/cifar10 --batch-size 256 --mixed-precision --jobs 3
    --reports /root/res/reports ${ACC_EXTRA:-})
  # Six runs and two parents share the GPU's memory.
  export XLA_PYTHON_CLIENT_MEM_FRACTION=0.12
  # shellcheck disable=SC2206  # the K values, split on spaces
  seed_views=(${SEED_VIEWS:+--teacher-views $SEED_VIEWS})
  if [ "$seed_e" -gt 0 ]; then
    python3 -m bench.accuracy "${common[@]}" --preset seed --seeds 0 1 2 \
      --teacher-epochs "$seed_e" --student-epochs "$seed_e" "${seed_views[@]}" \
      --out /root/res/accuracy-seed-gpu.json > /root/res/seed.log 2>&1 &
  fi
  if [ "$res_e" -gt 0 ]; then
    python3 -m bench.accuracy "${common[@]}" --preset resnet --seeds "${res_seeds[@]}" \
      --teacher-epochs "$res_e" --student-epochs "$res_e" \
      --student-lr "${RESNET_STUDENT_LR:-0.1}" --out /root/res/accuracy-resnet-gpu.json \
      > /root/res/resnet.log 2>&1 &
  fi
  wait
  tail -n 4 /root/res/seed.log /root/res/resnet.log 2>/dev/null || true
  ;;
pack)
  # Two archives, each under the 16 MiB a returned file may have: the profiler traces (their
  # XPlane files only; bench.trace_summary reads nothing else) apart from the rest.
  tar -czf "$OUT/res.tar.gz" --exclude=res/traces -C /root res
  if [ -d /root/res/traces ]; then
    (cd /root && find res/traces -name '*.xplane.pb' -o -name meta.json) \
      | tar -czf "$OUT/traces.tar.gz" -C /root -T -
  fi
  ls -la "$OUT"
  ;;
esac
