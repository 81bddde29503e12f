#!/usr/bin/env bash
# The adversarial term on the unrolled (training-time-test) steps of a well-trained EAGLE head
# (adversarial issue, item 2; docs/measurements.md "The adversarial term on the unrolled steps").
# Two fine-tunes of the shipped eagle-k1 with training-time test (ttt_steps=3), the same data
# (ShareGPT records 8000-9999, which no shipped head has seen), steps, schedule and seed: supervised
# only, and with the feature-mlp hinge game on every depth (the unrolled ones included), kept
# balanced by instance noise decaying over the run. Then held-out top-1 and free-running acceptance
# per depth, and one interleaved bench on the tuning prompts (MT-bench 16-39).
# ~70 min alone on the 2-core AVX2-only CPU (23 + 26 min of training); run it alone.
#   bash benchmarks/ttt_adversarial.sh [OUT]
set -euo pipefail
C="${KOALA_CACHE:-$HOME/.cache/koala}"
OUT="${1:-bench-results/ttt-adversarial}"
R="$C/runs"
STEPS="${STEPS:-400}"
COMMON=(--data "$C/data/sharegpt-skip8000" --head eagle --head-option ttt_steps=3 --init checkpoints/eagle-k1
        --steps "$STEPS" --lr 3e-4 --warmup 20 --seed 0 --eval-every "$STEPS" --precision fp32
        --tree static --tree-option preset=tiny --tree-option copy=3)
ADV=(--discriminator feature-mlp --adv-loss hinge --adv-weight 0.1 --adv-warmup 100 --d-lr 5e-5
     --instance-noise 2.0 --noise-steps "$STEPS")
[ -f "$R/eagle-ttt-sup/koala.json" ] || koala train "${COMMON[@]}" --out "$R/eagle-ttt-sup"
[ -f "$R/eagle-ttt-koala/koala.json" ] || koala train "${COMMON[@]}" "${ADV[@]}" --out "$R/eagle-ttt-koala"
mkdir -p "$OUT"; : > "$OUT/eval.txt"
for CK in checkpoints/eagle-k1 "$R/eagle-ttt-sup" "$R/eagle-ttt-koala"; do
  echo "== $CK" >> "$OUT/eval.txt"
  koala eval --checkpoint "$CK" --data "$C/data/heldout-skip10000" --split all --prompts mtbench \
      --limit 16 --depth 4 >> "$OUT/eval.txt"
done
koala bench --prompts mtbench --offset 16 --limit 24 --max-new-tokens 64 \
    --methods "vanilla,eagle-k1,$R/eagle-ttt-sup,$R/eagle-ttt-koala" --out "$OUT/bench"
