#!/usr/bin/env bash
# EAGLE-1's feature noise (heads issue, item 1: what helps depth 2+; docs/measurements.md "Feature
# noise"). Fine-tunes of the shipped eagle-k1 on the data, steps, schedule and seed of
# benchmarks/long_windows.sh's 256-token arms (whose two seeds give the noise between runs), with
# uniform noise of 0.1 and 0.3 x each feature's RMS on the features the head reads in training
# (`--head-option feature_noise=A`): deeper draft steps read the head's own imperfect features, and
# the noise teaches it to cope. Then held-out top-1, free-running acceptance past position 256 and
# one interleaved bench on the tuning prompts (MT-bench 16-39) beside the no-noise arm.
# ~35 min alone on the 2-core AVX2-only CPU (after benchmarks/long_windows.sh); run it alone.
#   bash benchmarks/feature_noise.sh [OUT]
set -euo pipefail
C="${KOALA_CACHE:-$HOME/.cache/koala}"
OUT="${1:-bench-results/feature-noise}"
R="$C/runs"
STEPS="${STEPS:-400}"
[ -f "$R/eagle-w256/koala.json" ] || { echo "run benchmarks/long_windows.sh first (its 256-token arm is the baseline)"; exit 2; }
for A in 0.1 0.3; do
  [ -f "$R/eagle-noise$A/koala.json" ] || koala train --data "$C/data/sharegpt-skip8000" --head eagle \
      --head-option feature_noise=$A --init checkpoints/eagle-k1 --steps "$STEPS" --lr 3e-4 --warmup 20 \
      --eval-every "$STEPS" --precision fp32 --tree static --tree-option preset=tiny --tree-option copy=3 \
      --seed 0 --window 256 --batch-size 8 --out "$R/eagle-noise$A"
done
mkdir -p "$OUT"
for CK in "$R/eagle-noise0.1" "$R/eagle-noise0.3"; do
  E="$OUT/eval-$(basename "$CK").txt"
  [ -s "$E" ] && continue  # evaluated already
  echo "== $CK, evaluation window 256" >> "$E.part"
  koala eval --checkpoint "$CK" --data "$C/data/heldout-skip10000" --split all --window 256 --depth 4 >> "$E.part"
  echo "== $CK, free-running, 320 new tokens" >> "$E.part"
  koala eval --checkpoint "$CK" --prompts mtbench --limit 12 --depth 4 --max-new-tokens 320 >> "$E.part"
  mv "$E.part" "$E"
done
koala bench --prompts mtbench --offset 16 --limit 24 --max-new-tokens 64 \
    --methods "vanilla,eagle-k1,$R/eagle-w256,$R/eagle-noise0.1,$R/eagle-noise0.3" --out "$OUT/bench"
