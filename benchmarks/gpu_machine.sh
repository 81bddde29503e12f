#!/usr/bin/env bash
# The GPU check on the lent GPU machine (see DEVELOPERS.md): its image has torch, transformers,
# safetensors, click, pluggy, tqdm, accelerate and pytest but no network, no `gguf` package and no
# default model. Run from the repository root, in the *second* of two back-to-back calls:
#   call 1 (carry .gpu/a): bash benchmarks/gpu_machine.sh stage    # keeps part 1 while warm
#   call 2 (carry .gpu/b): bash benchmarks/gpu_machine.sh run      # joins, checks, installs, runs
# Results go to $OUT (report.json, report.md, bench/).
set -euo pipefail
STAGE=/tmp/koala-gpu   # outside the working tree: survives between calls while the machine is warm
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  # SmolLM2-135M-Instruct.Q4_1.gguf

case "${1:-}" in
  stage)
    mkdir -p "$STAGE"
    cp .gpu/a/part-* "$STAGE"/
    cp -r .gpu/a/wheels "$STAGE"/ 2>/dev/null || true
    ls -la "$STAGE"
    ;;
  run)
    cp .gpu/b/part-* "$STAGE"/
    cat "$STAGE"/part-* > "$STAGE/SmolLM2-135M-Instruct.Q4_1.gguf"
    echo "$SHA  $STAGE/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c -
    pip install -q --no-deps --no-index "$STAGE"/wheels/*.whl
    pip install -q --no-deps --no-build-isolation -e .
    nvidia-smi --query-gpu=name,memory.total --format=csv
    export KOALA_CACHE="$STAGE/cache" PYTHONUNBUFFERED=1
    python benchmarks/gpu_check.py "${OUT:-gpu-report}" --model "$STAGE/SmolLM2-135M-Instruct.Q4_1.gguf"
    ;;
  *)
    echo "usage: bash benchmarks/gpu_machine.sh stage|run" >&2
    exit 2
    ;;
esac
