#!/usr/bin/env bash
# Longer training windows for EAGLE (heads issue, item 1: "longer training windows (today 256
# tokens)"; docs/measurements.md "Longer training windows"). Two fine-tunes of the shipped eagle-k1
# on the same data (ShareGPT records 8000-9999, unseen by every shipped head; conversations cut at
# 1024 tokens, 74 % longer than 512), steps, schedule, seed and tokens per step (2048): windows of
# 256 tokens x 8, and of 1024 x 2. A window starts the head's context afresh, so a head trained on
# 256-token windows never attends further back than 255 tokens, which decoding past position 256
# asks of it. Then held-out top-1 per depth with 256- and 512-token evaluation windows (the held-out
# conversations are cut at 512), free-running acceptance, and one interleaved bench on the tuning
# prompts (MT-bench 16-39). A second seed of the 256-token arm says how far two runs that differ
# only by chance (the order of the windows) lie apart.
# ~40 min alone on the 2-core AVX2-only CPU; run it alone.
#   bash benchmarks/long_windows.sh [OUT]
set -euo pipefail
C="${KOALA_CACHE:-$HOME/.cache/koala}"
OUT="${1:-bench-results/long-windows}"
R="$C/runs"
STEPS="${STEPS:-400}"
COMMON=(--data "$C/data/sharegpt-skip8000" --head eagle --init checkpoints/eagle-k1
        --steps "$STEPS" --lr 3e-4 --warmup 20 --eval-every "$STEPS" --precision fp32
        --tree static --tree-option preset=tiny --tree-option copy=3)
[ -f "$R/eagle-w256/koala.json" ] || koala train "${COMMON[@]}" --seed 0 --window 256 --batch-size 8 --out "$R/eagle-w256"
[ -f "$R/eagle-w1024/koala.json" ] || koala train "${COMMON[@]}" --seed 0 --window 1024 --batch-size 2 --out "$R/eagle-w1024"
[ -f "$R/eagle-w256-seed1/koala.json" ] || koala train "${COMMON[@]}" --seed 1 --window 256 --batch-size 8 --out "$R/eagle-w256-seed1"
mkdir -p "$OUT"
for CK in checkpoints/eagle-k1 "$R/eagle-w256" "$R/eagle-w1024" "$R/eagle-w256-seed1"; do
  E="$OUT/eval-$(basename "$CK").txt"
  [ -s "$E" ] && continue  # evaluated already
  for W in 256 512; do
    echo "== $CK, evaluation window $W" >> "$E.part"
    koala eval --checkpoint "$CK" --data "$C/data/heldout-skip10000" --split all --window "$W" \
        --depth 4 >> "$E.part"
  done
  echo "== $CK, free-running, 320 new tokens" >> "$E.part"
  koala eval --checkpoint "$CK" --prompts mtbench --limit 12 --depth 4 --max-new-tokens 320 >> "$E.part"
  mv "$E.part" "$E"
done
koala bench --prompts mtbench --offset 16 --limit 24 --max-new-tokens 64 \
    --methods "vanilla,eagle-k1,$R/eagle-w256,$R/eagle-w1024,$R/eagle-w256-seed1" --out "$OUT/bench"
