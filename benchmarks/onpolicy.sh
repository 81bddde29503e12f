#!/usr/bin/env bash
# Does on-policy data help EAGLE at depth 2+? (heads issue, item 4; README "On-policy data").
#
# Two fine-tunes of the same EAGLE head (BASE, default: the 4.18M-token eagle-k1-4m) with the same
# steps, schedule and seed, on ShareGPT records never used for training before (from record 6488 on):
#   regen: the target's own greedy answers to each conversation's first user turn (`--regenerate`)
#   text:  a teacher pass over the ShareGPT conversations themselves
# both with the bf16 teacher / generator, matched in tokens. Then teacher-forced top-1 on held-out
# ShareGPT text and on held-out on-policy answers (records 10,000 on), and free-running acceptance
# per depth on the tuning prompts (MT-bench 0-15). Every stage resumes or is skipped when done.
#   bash benchmarks/onpolicy.sh [OUT]                     (200k tokens a side)
#   SKIPS="6488 7190" bash benchmarks/onpolicy.sh [OUT]   (400k: a second chunk past the first)
# One heavy job: run it alone on a 2-core CPU.
set -euo pipefail
C="${KOALA_CACHE:-$HOME/.cache/koala}"
OUT="${1:-bench-results/onpolicy}"
BASE="${BASE:-$C/runs/eagle-k1-4m}"
SKIPS="${SKIPS:-6488}"        # sharegpt-bf16-skip2180 stopped at record 6488; "6488 7190": two chunks
TOKENS="${TOKENS:-200000}"
STEPS="${STEPS:-600}"
mkdir -p "$OUT"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/log.txt"; }

# 1. data, in chunks of TOKENS from each record in SKIPS (a chunk's regenerated set stops at a later
#    record than its teacher-pass set, since only first turns are answered: the next chunk starts
#    past both, so the 200k sets stay as they are when the experiment grows)
regen=(); text=()
for skip in $SKIPS; do
  log "regenerate $TOKENS tokens from record $skip"
  koala prepare --regenerate --skip "$skip" --dtype bfloat16 --max-tokens "$TOKENS" --max-length 1024 \
      --topk 8 --batch-size 32 --out "$C/data/regen-bf16-skip$skip" 2>&1 | tail -n 1 | tee -a "$OUT/log.txt"
  log "teacher pass from record $skip"
  koala prepare --skip "$skip" --dtype bfloat16 --max-tokens "$TOKENS" --max-length 1024 --topk 8 \
      --out "$C/data/sharegpt-bf16-skip$skip" 2>&1 | tail -n 1 | tee -a "$OUT/log.txt"
  regen+=(--data "$C/data/regen-bf16-skip$skip"); text+=(--data "$C/data/sharegpt-bf16-skip$skip")
done
log "held-out on-policy answers (records 10,000 on)"
koala prepare --regenerate --skip 10000 --dtype bfloat16 --max-tokens 25000 --max-length 1024 \
    --topk 0 --batch-size 32 --out "$C/data/heldout-regen-skip10000" 2>&1 | tail -n 1 | tee -a "$OUT/log.txt"

# 2. two fine-tunes, equal in everything but the data
size="$(( $(wc -w <<< "$SKIPS") * TOKENS / 1000 ))k"
for arm in regen text; do
  ck="$C/runs/eagle-ft-$arm-$size"
  if [ ! -f "$ck/koala.json" ]; then
    log "fine-tune $arm ($size)"
    resume=""; [ -d "$ck.train-state" ] && resume="--resume"
    if [ "$arm" = regen ]; then data=("${regen[@]}"); else data=("${text[@]}"); fi
    koala train --init "$BASE" "${data[@]}" --head eagle --steps "$STEPS" --lr 3e-4 --warmup 20 \
        --eval-every 300 --precision bf16 --tree static --tree-option preset=tiny $resume --out "$ck" \
        > "$OUT/train-$arm-$size.log" 2>&1
    tr '\r' '\n' < "$OUT/train-$arm-$size.log" | grep -v '^train' | tail -n 8 | tee -a "$OUT/log.txt"
  fi
done

# 3. the same measurements for the base head and both arms
for ck in "$BASE" "$C/runs/eagle-ft-text-$size" "$C/runs/eagle-ft-regen-$size"; do
  name="$(basename "$ck")"
  [ -f "$OUT/$name.json" ] && continue
  log "eval $name"
  koala eval --checkpoint "$ck" --data "$C/data/heldout-regen-skip10000" --split all --json \
      > "$OUT/$name.regen.json" 2>/dev/null
  koala eval --checkpoint "$ck" --data "$C/data/heldout-skip10000" --split all --prompts mtbench \
      --limit 16 --depth 5 --json > "$OUT/$name.tmp" 2>/dev/null
  mv "$OUT/$name.tmp" "$OUT/$name.json"
done
python - "$OUT" "$(basename "$BASE")" <<'PY' | tee "$OUT/summary.md"
import json, sys
from pathlib import Path
out, base = Path(sys.argv[1]), sys.argv[2]
print("| head | held-out ShareGPT top-1 (depth 1) | held-out on-policy top-1 (depth 1) "
      "| free-running acceptance, depth 1-5 (MT-bench 0-15) | chain-5 tau |")
print("|---|---:|---:|---|---:|")
names = [base] + sorted(p.name[:-5] for p in out.glob("eagle-ft-*.json") if ".regen" not in p.name)
for name in names:
    r, g = json.loads((out / f"{name}.json").read_text()), json.loads((out / f"{name}.regen.json").read_text())
    fr = r["free_running"]
    print(f"| {name} | {r['top1'][0]:.3f} | {g['top1'][0]:.3f} | "
          + " ".join(f"{a:.2f}" for a in fr["rates"]) + f" | {fr['tau']:.2f} |")
PY
log "done"
