#!/usr/bin/env bash
# The adversarial game split over micro-batches and workers, on the real model and real data
# (README "Training on several workers"): 12 steps of a Hydra head with the logit-mlp game, as one
# batch, as 2 micro-batches in one process, and on 2 gloo workers under torchrun; prints each run's
# time, validation top-1 and last losses, and the largest head/discriminator difference between the
# last two (which must compute the same thing). ~4 min on a 2-core CPU; run it alone.
#   bash benchmarks/split_game.sh [DATA] [OUT]     (DATA: a set prepared with --topk 8)
set -euo pipefail
C="${KOALA_CACHE:-$HOME/.cache/koala}"
DATA="${1:-$C/data/sharegpt-skip8000}"
OUT="${2:-/tmp/koala-split-game}"
rm -rf "$OUT"; mkdir -p "$OUT"
COMMON=(--data "$DATA" --head hydra --head-option heads=3 --head-option draft_vocab=8192 --steps 12
        --batch-size 8 --window 256 --lr 1e-3 --warmup 2 --seed 0 --eval-every 12
        --discriminator logit-mlp --adv-loss hinge --adv-weight 0.1 --adv-warmup 0 --d-lr 5e-5
        --instance-noise 2.0 --noise-steps 12)
python -m koala_core.cli train "${COMMON[@]}" --micro-batches 1 --out "$OUT/micro1"
python -m koala_core.cli train "${COMMON[@]}" --micro-batches 2 --out "$OUT/micro2"
python -m torch.distributed.run --standalone --nproc-per-node 2 -m koala_core.cli train "${COMMON[@]}" \
    --micro-batches 2 --out "$OUT/workers2"
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
from safetensors.torch import load_file
out = Path(sys.argv[1])
for name in ("micro1", "micro2", "workers2"):
    m = json.loads((out / name / "koala.json").read_text())["metrics"]
    last = m["history"][-1]
    print(f"{name:9s} {m['train_seconds']:6.1f} s  val top-1 " + " / ".join(f"{a:.3f}" for a in m["val_top1"])
          + "  " + "  ".join(f"{k} {last[k]:.4f}" for k in ("loss", "d_loss", "d_acc", "g_adv")))
a, b = (load_file(str(out / f"{n}.train-state" / "state.safetensors")) for n in ("micro2", "workers2"))
print("largest head/discriminator difference, micro2 vs workers2:",
      max((a[k].float() - b[k].float()).abs().max().item() for k in a if k.startswith(("head.", "disc."))))
PY
