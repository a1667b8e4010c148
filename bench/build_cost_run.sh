#!/usr/bin/env bash
# The figures of BENCHMARKS.md "Placement cost, reference ratio and its bound" (issue 32 item 5)
# from one run on one machine: the anatomy rule's cost against the build before it (7ab68b0),
# the shard phase against the order-1 scipy reference, and the split that bounds that ratio.
# Usage: bash bench/build_cost_run.sh [BEFORE_DIR]   (default /tmp/before; made with
# `git worktree add` when absent). Needs the sample data ($EXEMPLAR_SAM_DATA, default ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
before="${1:-/tmp/before}"
py="${PYTHON:-python}"
export OMP_NUM_THREADS=1
export EXEMPLAR_SAM_DATA="${EXEMPLAR_SAM_DATA:-$(cd .. && pwd)/shared/data}"
[ -d "$before" ] || git worktree add --detach "$before" 7ab68b0
echo "start $(date -u '+%Y-%m-%d %H:%M:%S') UTC, load $(cut -d' ' -f1 /proc/loadavg), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) (model $(grep -m1 '^model\s' /proc/cpuinfo | cut -d: -f2 | tr -d ' '))"
"$py" bench/bench_shard_pair.py --before "$before" --after . --presets brats,synapse --reps 5
"$py" bench/bench_build.py --presets brats,synapse --naive-samples 300
"$py" bench/reference_bound.py --samples 300
echo "end $(date -u '+%H:%M:%S') UTC, load $(cut -d' ' -f1 /proc/loadavg)"
