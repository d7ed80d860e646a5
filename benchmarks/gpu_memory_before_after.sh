#!/usr/bin/env bash
# Per-rank GPU memory before/after a change, in one device call: the capacity benchmark's scene at one
# size, replicated on 1 GPU (this tree: the denominator of the sharded bars) and sharded at each rank
# count from BEFORE_TREE (the tree before the change, `git worktree add --detach .before COMMIT`,
# carried along) and from this tree. Every run is capped (4 GiB a rank) and the ranks share the one GPU
# over gloo (`--ranks-per-gpu 8`), so each rank's peak is that of an N-GPU run; all runs go side by
# side (memory, not speed, is measured). Each run's results.md lands in OUTDIR as it finishes.
# Usage (GPU machine, repository root; RANKS like 2,4):
#   source .devicekit/setup.sh && bash benchmarks/gpu_memory_before_after.sh OUTDIR BEFORE_TREE SIZE IMAGES RANKS [capacity arguments]
set -u
out=$1 before=$(cd "$2" && pwd) size=$3 images=$4 ranks=$5
root=$PWD start=$(date +%s)
cache=/tmp/capacity_scenes
common=(--sizes "$size" --cap-gib 4 --images "$images" --cache "$cache" "${@:6}")
mkdir -p "$out"
PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH} python benchmarks/capacity.py --generate-only "${common[@]}" > /dev/null  # once, before the runs that share it
capacity() {  # TREE NAME capacity-arguments...
  local tree=$1 name=$2
  rm -rf "/tmp/memory_$name"  # no earlier call's results taken for this one's
  (cd "$tree" && PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} python benchmarks/capacity.py "${@:3}" "${common[@]}" \
    --out "/tmp/memory_$name" > "/tmp/memory_$name.log" 2>&1)
  cp "/tmp/memory_$name/results.md" "$out/$name.md" 2>/dev/null || tail -5 "/tmp/memory_$name.log"
  echo "$name done at $(( $(date +%s) - start )) s"
}
capacity "$root" replicated --layout replicated --gpus 1 &
for n in ${ranks//,/ }; do
  capacity "$root" "after_$n" --layout sharded --gpus "$n" --ranks-per-gpu 8 &
done
for n in ${BEFORE_RANKS:-${ranks//,/ }}; do  # BEFORE_RANKS (space-separated): fewer before-runs where device time is short
  capacity "$before" "before_${n}" --layout sharded --gpus "$n" --ranks-per-gpu 8 &
done
wait
