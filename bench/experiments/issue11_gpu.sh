#!/bin/bash
# Record of the lent-H100 call behind docs/results.md "The 3-seed table" (issue 11), 2026-11-26.
# Run from the repository root with, carried beside it: .whl/ (wheels of segment-anything, loralib,
# zarr, numcodecs, nibabel, ...), .gpu3/r24 (the cohort's 24 training cases), .gpu3/split24.json, .gpu3/lists
# (the grid's exemplar lists), .gpu3/pre.pt (the grid's pretrained model), .gpu3/synapse (the Synapse sample)
# and .gpu3/sample.json (= bench/experiments/tiny_per_sample_dice.json).
# Issue 11: pretrained + LoRA / + full fine-tuning on the cohort grid's data (BraTS, 17 and 150
# exemplars, seeds 0-2) and the Synapse 1-exemplar arms (scratch / LoRA / full, seeds 0-2).
# Float32 fits (bench/gpu_fit_fp32.py), per-sample Dice as the grid. Each finished run is packed
# into $OUT at once, so a timeout still returns what finished.
STEPS=${STEPS:-2000}
[ -n "$LOCAL" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || [ -n "$LOCAL" ] || python3 -c "import zipfile,glob; [zipfile.ZipFile(w).extractall('/tmp/site') for w in glob.glob('.whl/*.whl')]"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
G=.gpu3; R=$G/r24; L=$OUT/logs; mkdir -p /tmp/ds /tmp/runs $L
t0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > $L/gpu.txt 2>&1
for sn in 0:17 1:17 2:17 0:150 1:150 2:150; do s=${sn%:*}; n=${sn#*:}
  python3 -m synth build --dataset brats --root $R --split-file $G/split24.json --split train --exemplar-list $G/lists/seed-$s/exemplars_$n.json \
    --seed $s --workers 2 --no-progress --out /tmp/ds/brats_${n}_s$s > $L/build_brats_${n}_s$s.log 2>&1 &
done
for s in 0 1 2; do
  ( python3 -m synth select --dataset synapse --root $G/synapse --split all --exemplars 1 --seed $s --out /tmp/ds/syn_list_s$s.json \
    && python3 -m synth build --dataset synapse --root $G/synapse --split all --exemplar-list /tmp/ds/syn_list_s$s.json --seed $s \
       --no-progress --out /tmp/ds/syn_s$s ) > $L/build_syn_s$s.log 2>&1 &
done
wait; echo "data: $(( $(date +%s) - t0 )) s"
for d in /tmp/ds/*/; do cp $d/dataset.json $L/dataset_$(basename $d).json 2>/dev/null; done
cp /tmp/ds/syn_list_s*.json $L/ 2>/dev/null
F="--model tiny --img-size 128 --steps $STEPS --batch-size 8 --num-threads 1 --no-progress --config $G/sample.json"
one() {  # name shards seed [extra fit options]
  local name=$1 ds=$2 s=$3; shift 3
  python3 bench/gpu_fit_fp32.py fit --shards /tmp/ds/$ds $F --seed $s "$@" --out /tmp/runs/$name > $L/fit_$name.log 2>&1 || return
  python3 - /tmp/runs/$name/checkpoints/last.pt <<'PY'
import sys, torch
p = sys.argv[1]; c = torch.load(p, weights_only=False, map_location='cpu')
c['optimizer'] = {'state': {}, 'param_groups': c['optimizer']['param_groups'], 'note': 'moments dropped for transfer'}
torch.save(c, p)
PY
  tar czf $OUT/$name.tgz -C /tmp/runs $name
}
PRE="--checkpoint $G/pre.pt"
for s in 0 1 2; do
  one lora150_s$s brats_150_s$s $s $PRE --trainable samed_lora &
  one full150_s$s brats_150_s$s $s $PRE --trainable full &
  one syn_scratch_s$s syn_s$s $s &
  one syn_lora_s$s syn_s$s $s $PRE --trainable samed_lora &
  one syn_full_s$s syn_s$s $s $PRE --trainable full &
done
one lora17_s2 brats_17_s2 2 $PRE --trainable samed_lora &
one full17_s2 brats_17_s2 2 $PRE --trainable full &
one lora17_s0_gpu brats_17_s0 0 $PRE --trainable samed_lora &   # against the CPU run of the same seed
wait; echo "fits: $(( $(date +%s) - t0 )) s"
tail -qn 1 $L/fit_*.log
ls $OUT
# Note: the device returns at most 8 files from $OUT; the runs left over were packed afterwards into 3 archives (x1-x3.tgz).
