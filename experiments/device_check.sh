#!/usr/bin/env bash
# One command that checks every CUDA path of pyro-ncl on a GPU machine (at most ~8 minutes on one GPU), from the
# repository root:
#
#     bash experiments/device_check.sh
#
# Steps (each with its pass/fail, time and result in the summary table at the end; a failed step does not stop
# the next; the exit status is 1 if any step failed):
#   1. the tests that need CUDA (tests/test_cuda.py, marked `cuda`): bf16 autocast, channels_last, --compile, the
#      gate head in fp32, plates and prior constants on the device, state and RNG states restored onto the GPU;
#   2. host-device synchronisations per step of every data path and method (experiments/count_syncs.py, with
#      torch.cuda.set_sync_debug_mode; its torchrun row runs the data-parallel path in a one-process NCCL group);
#   3-4. bench_step.py on ImageNet-100-sized inputs (ResNet-18, 224 px, batch 128, projector 16384/2048) without
#      and with --amp bf16 --channels-last: the SVI/plain ratio and images/s against a plain-torch SimCLR step on
#      the same ResNet-18 (target: SVI within 10% of SimCLR);
#   5. bench_gate.py: the default gate's kernels and time per step at K 128 / 512 / 2048 beside the encoder, its share
#      at the ImageNet-100 recipe's shapes, the budget anneal's cost (CUDA events);
#   6. a 1-epoch run on a synthetic ImageNet-100 folder (made here, small) with --gpu-augment and 4 loader workers;
#   7. torchrun (NCCL; 1 process per GPU, at most 2) on a small in-memory dataset;
#   8. a `--guide bernoulli --baseline decaying` run resumed on the GPU from its epoch-1 checkpoint.
# Without a GPU it runs the same steps in a tiny CPU form (gloo instead of NCCL, tiny sizes, the CUDA tests on the
# CPU) and says so. Python: $PYTHON, else .venv/bin/python, else python/python3. The work folder (synthetic data,
# runs, logs) is removed on success and kept on failure (KEEP_WORK=1 keeps it always). DEVICE_CHECK_SKIP="syncs
# torchrun ..." (step names: data tests syncs bench_fp32 bench_fast bench_gate in100 torchrun resume) leaves those
# steps out: each is listed as SKIP in the summary (the test suite runs the CPU form so, without the steps it
# checks elsewhere).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
SKIP_LIST=${DEVICE_CHECK_SKIP:-}; SKIP=" ${SKIP_LIST//,/ } "; SKIPPED=()
for name in $SKIP; do
  case $name in data|tests|syncs|bench_fp32|bench_fast|bench_gate|in100|torchrun|resume) ;;
    *) echo "DEVICE_CHECK_SKIP: unknown step '$name' (steps: data tests syncs bench_fp32 bench_fast bench_gate in100" \
            "torchrun resume)" >&2; exit 2 ;;
  esac
done
ROOT=$(pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=$ROOT/.venv/bin/python
elif command -v python >/dev/null 2>&1; then PY=python
else PY=python3
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/device_check.XXXXXX")
mkdir -p "$WORK/logs" "$WORK/runs"
export PY WORK ROOT

GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null \
       || echo 0)
if (( GPUS > 0 )); then
  MODE="GPU: $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))') (${GPUS} visible)"
  DEVICE=cuda
  NPROC=$(( GPUS < 2 ? GPUS : 2 ))
  # per-step limits (seconds), sizes
  LIMIT_TESTS=240; LIMIT_SYNCS=150; LIMIT_BENCH=150; LIMIT_RUN=240
  TESTS_ENV=""
  SYNCS="--device cuda --workers 4"
  BENCH="--backbone resnet18 --no-cifar-stem --channels 3 --size 224 --batch-size 128 --hidden-dim 16384 \
         --feature-dim 2048 --repeats 10 --warmup 3 --device cuda"
  IN100_DATA="4 1 256"      # train images per class, val images per class, image side (px)
  IN100="--preset bayesncl_imagenet100 --epochs 1 --batch-size 64 --gpu-augment --num-workers 4 --probe-epochs 2 \
         --checkpoint-every 0 --eval-batch-size 256"
  SMALL="--subset 1024 --batch-size 128 --width 16 --hidden-dim 128 --feature-dim 64 --probe-epochs 2"
  GATE="--device cuda --repeats 10"
else
  MODE="CPU: no GPU visible, so the tiny CPU form (gloo instead of NCCL, tiny sizes, the CUDA tests on the CPU)"
  DEVICE=cpu
  NPROC=2
  LIMIT_TESTS=900; LIMIT_SYNCS=900; LIMIT_BENCH=900; LIMIT_RUN=900  # hangs only: a shared CPU can be very slow
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # tiny models: more threads only spin
  TESTS_ENV="PYRO_NCL_CUDA_TESTS_ON_CPU=1"
  SYNCS="--device cpu --methods bayesncl --warmup 1 --steps 1 --batch-size 8 --size 16 --width 4 --hidden-dim 16 \
         --feature-dim 8 --workers 1"
  BENCH="--width 4 --hidden-dim 32 --feature-dim 16 --channels 3 --size 16 --batch-size 8 --repeats 1 --warmup 0 \
         --device cpu"
  IN100_DATA="1 1 40"
  IN100="--recipe none --image-size 32 --width 4 --hidden-dim 32 --feature-dim 16 --epochs 1 --batch-size 50 \
         --gpu-augment --num-workers 2 --probe-epochs 1 --checkpoint-every 0"
  SMALL="--subset 128 --batch-size 32 --width 4 --hidden-dim 32 --feature-dim 16 --probe-epochs 1 --eval-subset 64"
  GATE="--device cpu --quick"
fi
export DEVICE NPROC TESTS_ENV SYNCS BENCH IN100_DATA IN100 SMALL GATE

# ---------------------------------------------------------------- the steps (each runs in its own bash)
make_data() {  # synthetic ImageNet-100 folder (all 100 classes of the list) and a fake MNIST in IDX format
  "$PY" - "$WORK" $IN100_DATA <<'PYTHON'
import gzip, struct, sys
from pathlib import Path
import numpy as np
from PIL import Image
from pyro_ncl.data.imagenet100 import imagenet100_classes
work, per_train, per_val, side = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(0)
for c, wnid in enumerate(imagenet100_classes()):
    for split, count in (("train", per_train), ("val", per_val)):
        folder = work / "in100" / split / wnid
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):  # a class colour plus noise, so that the classes differ a little
            base = np.array([(c * 37) % 256, (c * 91) % 256, (c * 53) % 256], dtype=np.int16)
            pixels = np.clip(base + rng.integers(-60, 60, (side, side * 5 // 4, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{wnid}_{i}.JPEG", quality=85)
mnist = work / "mnist"
mnist.mkdir()
for prefix, n in (("train", 2048), ("t10k", 256)):
    labels = (np.arange(n) % 10).astype(np.uint8)
    images = np.clip(rng.normal(labels[:, None, None] * 20.0 + 40, 40, (n, 28, 28)), 0, 255).astype(np.uint8)
    for name, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
        (mnist / name).write_bytes(header + array.tobytes())
print(f"made {work / 'in100'} ({100 * per_train} train, {100 * per_val} val images of {side} px) and {mnist}")
PYTHON
}

step_tests() {
  "$PY" -c 'import pytest' 2>/dev/null || { echo "pytest is not installed: pip install -e '.[dev]'"; return 1; }
  env $TESTS_ENV "$PY" -m pytest -q -m cuda -rs tests/test_cuda.py -p no:cacheprovider
}

step_syncs() { "$PY" experiments/count_syncs.py $SYNCS; }

step_bench_fp32() { "$PY" experiments/bench_step.py $BENCH; }

step_bench_fast() { "$PY" experiments/bench_step.py $BENCH --amp bf16 --channels-last; }

step_bench_gate() { "$PY" experiments/bench_gate.py $GATE; }

step_in100() {
  "$PY" experiments/run_svi.py --dataset imagenet100 --data-root "$WORK/in100" $IN100 --out "$WORK/runs/in100"
  "$PY" - "$WORK/runs/in100" <<'PYTHON'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
config, metrics = json.loads((run / "config.json").read_text()), json.loads((run / "metrics.json").read_text())
assert config["gpu_augment"] is True and config["num_workers"] in (2, 4), (config["gpu_augment"], config["num_workers"])
print(f"RESULT {metrics['steps']} steps in {metrics['train_seconds']:.1f} s, "
      f"kNN accuracy {metrics['knn_accuracy']:.3f}")
PYTHON
}

step_torchrun() {
  OMP_NUM_THREADS=1 "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" experiments/run_svi.py \
    --dataset mnist --data-root "$WORK/mnist" $SMALL --epochs 1 --out "$WORK/runs/torchrun"
  test -f "$WORK/runs/torchrun/metrics.json"
  echo "RESULT $NPROC process(es), backend $([[ $DEVICE == cuda ]] && echo nccl || echo gloo)$(
    [[ $NPROC == 1 ]] && echo ' (one process: no collectives here; see the sync-count step for NCCL ones)')"
}

step_resume() {
  local straight="$WORK/runs/bernoulli" resumed="$WORK/runs/bernoulli-resumed"
  "$PY" experiments/run_svi.py --dataset mnist --data-root "$WORK/mnist" $SMALL --epochs 2 --guide bernoulli \
    --baseline decaying --checkpoint-every 0 --log-every 1 --out "$straight"
  cp -r "$straight" "$resumed"  # as if killed after epoch 1: its last checkpoint is the epoch-1 one
  mv "$resumed/checkpoint.prev.pt" "$resumed/checkpoint.pt"
  rm "$resumed/metrics.json"
  "$PY" experiments/run_svi.py --resume "$resumed"
  "$PY" - "$straight" "$resumed" <<'PYTHON'
import csv, sys
import torch
from pyro_ncl.checkpoint import load_checkpoint
rows = [{r["step"]: float(r["loss"]) for r in csv.DictReader(open(f"{run}/log.csv"))} for run in sys.argv[1:]]
assert rows[0].keys() == rows[1].keys(), "the resumed run logged other steps"
gap = max(abs(rows[0][k] - rows[1][k]) for k in rows[0])
state = load_checkpoint(f"{sys.argv[2]}/checkpoint.pt")
baseline = state["pyro_params"]["__baseline_avg_downstream_cost_gate"]
print(f"RESULT resumed to step {state['step']}; largest loss difference to the straight run {gap:.2g}; "
      f"baseline of {baseline.numel()} costs restored and updated")
PYTHON
}
export -f make_data step_tests step_syncs step_bench_fp32 step_bench_fast step_bench_gate step_in100 step_torchrun \
  step_resume

# ---------------------------------------------------------------- running and reporting
NAMES=(); STATUS=(); SECONDS_TAKEN=(); RESULTS=(); FAILED=0

result_of() {  # the step's one-line result, from its log
  local name=$1 log=$2
  case $name in
    "CUDA tests"*) tail -n 1 "$log" | sed 's/=//g; s/^ *//; s/ *$//' ;;
    "sync counts"*) grep -h "^syncs per step" "$log" | sed 's/^syncs per step: //' ;;
    "gate cost"*) grep -h "^RESULT" "$log" | tail -n 1 | sed 's/^RESULT //' ;;
    "bench"*) "$PY" - "$log" "$DEVICE" <<'PYTHON'
import re, sys
text, device = open(sys.argv[1]).read(), sys.argv[2]
plain = re.search(r"ratio SVI / plain: ([\d.]+)", text)
simclr = re.search(r"images/s: SVI (\d+), plain SimCLR (\d+); ratio SVI / SimCLR time: ([\d.]+)", text)
speed = re.search(r"speed-up ([\d.]+)x", text)
if plain and simclr:
    ratio = float(simclr.group(3))
    target = ("met" if ratio <= 1.10 else "MISSED") if device == "cuda" else "not judged on the CPU"
    print(f"SVI/plain {plain.group(1)}; SVI {simclr.group(1)} vs SimCLR {simclr.group(2)} img/s, time ratio {ratio:.3f}"
          f" (target <= 1.10: {target})" + (f"; bf16+channels-last {speed.group(1)}x fp32" if speed else ""))
PYTHON
    ;;
    *) grep -h "^RESULT" "$log" | tail -n 1 | sed 's/^RESULT //' ;;
  esac
}

run_step() {  # run_step NAME LIMIT FUNCTION
  local name=$1 limit=$2 fn=$3 log="$WORK/logs/$3.log" start end rc status
  if [[ $SKIP == *" ${fn#step_} "* || ( $fn == make_data && $SKIP == *" data "* ) ]]; then
    echo "== $name: left out (DEVICE_CHECK_SKIP)"
    NAMES+=("$name"); STATUS+=("SKIP"); SECONDS_TAKEN+=("0.0"); RESULTS+=("left out (DEVICE_CHECK_SKIP)")
    SKIPPED+=("$name")
    return 0
  fi
  echo "== $name"
  start=$(date +%s.%N)
  set +e
  timeout --kill-after=15 "$limit" bash -c "set -euo pipefail; $fn" >"$log" 2>&1
  rc=$?
  set -e
  end=$(date +%s.%N)
  if (( rc == 0 )); then status=PASS
  elif (( rc == 124 || rc == 137 )); then status="FAIL (timeout ${limit}s)"; FAILED=1
  else status="FAIL (exit $rc)"; FAILED=1
  fi
  if [[ $status != PASS ]]; then tail -n 30 "$log" | sed 's/^/   | /'; fi
  NAMES+=("$name"); STATUS+=("$status")
  SECONDS_TAKEN+=("$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')")
  RESULTS+=("$(result_of "$name" "$log" 2>/dev/null | head -n 1 || true)")
}

echo "device_check: $MODE"
echo "python: $PY ($("$PY" -c 'import torch, pyro; print("torch", torch.__version__, "pyro", pyro.__version__)'))"
echo "work folder: $WORK"
run_step "synthetic data" 600 make_data
run_step "CUDA tests (pytest -m cuda)" "$LIMIT_TESTS" step_tests
run_step "sync counts per step" "$LIMIT_SYNCS" step_syncs
run_step "bench fp32" "$LIMIT_BENCH" step_bench_fp32
run_step "bench bf16 + channels-last" "$LIMIT_BENCH" step_bench_fast
run_step "gate cost (bench_gate.py)" "$LIMIT_BENCH" step_bench_gate
run_step "1 epoch imagenet100 --gpu-augment" "$LIMIT_RUN" step_in100
run_step "torchrun" "$LIMIT_RUN" step_torchrun
run_step "resume --guide bernoulli" "$LIMIT_RUN" step_resume

echo
echo "device_check summary: $MODE"
printf '| %-36s | %-18s | %7s | %s\n' "step" "status" "seconds" "result"
printf '|%s|%s|%s|%s\n' "--------------------------------------" "--------------------" "---------" "--------"
for i in "${!NAMES[@]}"; do
  printf '| %-36s | %-18s | %7s | %s\n' "${NAMES[$i]}" "${STATUS[$i]}" "${SECONDS_TAKEN[$i]}" "${RESULTS[$i]}"
done
if (( FAILED )); then
  echo "FAILED: see the logs in $WORK/logs"
  exit 1
fi
if (( ${#SKIPPED[@]} )); then
  echo "all $(( ${#NAMES[@]} - ${#SKIPPED[@]} )) steps run passed (${#SKIPPED[@]} left out by DEVICE_CHECK_SKIP)"
else
  echo "all ${#NAMES[@]} steps passed"
fi
if [[ "${KEEP_WORK:-0}" == 1 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
