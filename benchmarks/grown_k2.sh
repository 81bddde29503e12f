#!/usr/bin/env bash
# KOALA's K = 2 grown from the shipped eagle-k1 (adversarial issue, items 1 and 3; docs/measurements.md
# "K = 2 grown from eagle-k1"). `koala train --init checkpoints/eagle-k1 --head-option layers=2`
# loads the trained layer and starts a second one as the identity; two fine-tunes on the data,
# steps, schedule and seed of benchmarks/long_windows.sh's 256-token arms (the K = 1 fine-tunes,
# whose two seeds give the noise between runs): supervised, and with the feature-mlp hinge game of
# benchmarks/ttt_adversarial.sh (balanced by instance noise decaying over the run). Then held-out
# top-1, free-running acceptance past position 256 and one interleaved bench on the tuning prompts
# (MT-bench 16-39) beside eagle-k1 and the K = 1 fine-tune.
# ~35 min alone on the 2-core AVX2-only CPU (after benchmarks/long_windows.sh); run it alone.
#   bash benchmarks/grown_k2.sh [OUT]
set -euo pipefail
C="${KOALA_CACHE:-$HOME/.cache/koala}"
OUT="${1:-bench-results/grown-k2}"
R="$C/runs"
STEPS="${STEPS:-400}"
[ -f "$R/eagle-w256/koala.json" ] || { echo "run benchmarks/long_windows.sh first (its K = 1 arm is the baseline)"; exit 2; }
COMMON=(--data "$C/data/sharegpt-skip8000" --head eagle --head-option layers=2 --init checkpoints/eagle-k1
        --steps "$STEPS" --lr 3e-4 --warmup 20 --eval-every "$STEPS" --precision fp32 --seed 0
        --window 256 --batch-size 8 --tree static --tree-option preset=tiny --tree-option copy=3)
ADV=(--discriminator feature-mlp --adv-loss hinge --adv-weight 0.1 --adv-warmup 100 --d-lr 5e-5
     --instance-noise 2.0 --noise-steps "$STEPS")
[ -f "$R/eagle-k2-grown-sup/koala.json" ] || koala train "${COMMON[@]}" --out "$R/eagle-k2-grown-sup"
[ -f "$R/eagle-k2-grown-koala/koala.json" ] || koala train "${COMMON[@]}" "${ADV[@]}" --out "$R/eagle-k2-grown-koala"
mkdir -p "$OUT"
for CK in "$R/eagle-k2-grown-sup" "$R/eagle-k2-grown-koala"; do
  E="$OUT/eval-$(basename "$CK").txt"
  [ -s "$E" ] && continue  # evaluated already
  echo "== $CK, evaluation window 256" >> "$E.part"
  koala eval --checkpoint "$CK" --data "$C/data/heldout-skip10000" --split all --window 256 --depth 4 >> "$E.part"
  echo "== $CK, free-running, 320 new tokens" >> "$E.part"
  koala eval --checkpoint "$CK" --prompts mtbench --limit 12 --depth 4 --max-new-tokens 320 >> "$E.part"
  mv "$E.part" "$E"
done
koala bench --prompts mtbench --offset 16 --limit 24 --max-new-tokens 64 \
    --methods "vanilla,eagle-k1,$R/eagle-w256,$R/eagle-k2-grown-sup,$R/eagle-k2-grown-koala" --out "$OUT/bench"
