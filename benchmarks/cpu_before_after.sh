#!/usr/bin/env bash
# Before/after of a change on the CPU (where no GPU is to be had): splatfacto-dist from .before/ (the
# tree before the change: `mkdir .before && git archive COMMIT | tar -x -C .before`) against this tree,
# one process each, same scene and image budget, no stock job, ROUNDS times alternating (before, after,
# before, ...) so that a drift of the machine's load falls on both. Each tree's benchmark runs from
# that tree's root with it first on PYTHONPATH, so its own splatfacto_dist is the one imported.
# Usage (repository root; SCENE a scene folder, e.g. from `splatfacto-dist-scene`):
#   bash benchmarks/cpu_before_after.sh OUTDIR SCENE IMAGES ROUNDS [bench arguments]
set -u
out=$1 scene=$(cd "$2" && pwd) images=$3 rounds=$4
work=/tmp/cpu_before_after
mkdir -p "$out" "$work"
for round in $(seq 1 "$rounds"); do
  for tree in .before .; do
    name=$([ "$tree" = . ] && echo after || echo before)
    (cd "$tree" && PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} OMP_NUM_THREADS=1 python -m splatfacto_dist.benchmarking.bench \
      --data "$scene" --budget "$images" --gpus 1 --no-stock --out "$work/${name}_$round" \
      --machine.device-type cpu "${@:5}" 2>&1 | grep '^|' | sed "s/^/$name $round /")
  done
done | tee "$out/before_after.txt"
