#!/usr/bin/env bash
# The GPU check on the lent GPU machine (see DEVELOPERS.md): its image has torch, transformers,
# safetensors, click, pluggy, tqdm, accelerate and pytest but no network, no `gguf` package and no
# default model. A call carries at most 64 MiB *including the tracked tree* (34 MB today), so the
# model's GGUF (98 MB) travels in K parts over K back-to-back calls (K = 4 today):
#   here:                         bash benchmarks/gpu_machine.sh prepare   # .gpu/p1..pK; prints the calls
#   calls 1..K-1 (carry .gpu/pI): bash benchmarks/gpu_machine.sh stage     # keeps the part while warm
#   call K (carry .gpu/pK):       bash benchmarks/gpu_machine.sh run       # joins, checks, installs, runs
#                            or:  bash benchmarks/gpu_machine.sh train     # ... trains heads instead
# `join` does the last call's joining and checking alone (tests/test_gpu_machine.py rehearses the
# whole hand-over with a small file). Results go to $OUT: the GPU check's report.json, report.md,
# bench/ (`run`, benchmarks/gpu_check.py), or the trained heads with their report (`train`,
# benchmarks/gpu_train.py).
set -euo pipefail
shopt -s nullglob
STAGE=${KOALA_GPU_STAGE:-/tmp/koala-gpu}   # outside the working tree: survives between calls while warm
PARTS=${KOALA_GPU_PARTS:-.gpu}             # where `prepare` writes the parts (git-ignored)
SHA=${KOALA_GPU_SHA:-b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53}  # the default GGUF
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
LIMIT=${KOALA_GPU_LIMIT:-$((64 * 1024 * 1024))}  # what one call may carry, the working tree included
MARGIN=$((1024 * 1024))

travelling() {  # bytes every call sends anyway: tracked and untracked-not-ignored files
  { git ls-files -z; git ls-files -z --others --exclude-standard; } \
    | xargs -0 -r stat -c %s 2>/dev/null | awk '{ s += $1 } END { print s + 0 }'
}

stage() {
  mkdir -p "$STAGE"
  for d in "$PARTS"/p*/; do
    cp "$d"part-* "$d"count "$STAGE"/
    if [ -d "$d"wheels ]; then cp -r "$d"wheels "$STAGE"/; fi
  done
  ls -la "$STAGE"
}

join() {
  stage
  local k i f parts=()
  k=$(cat "$STAGE/count" 2>/dev/null) || { echo "no part has arrived: carry .gpu/pI with each call" >&2; exit 3; }
  for ((i = 0; i < k; i++)); do
    f=$(printf '%s/part-%02d' "$STAGE" "$i")
    if [ ! -f "$f" ]; then
      echo "part $((i + 1)) of $k is missing (the machine went back between calls?): start again from call 1" >&2
      exit 3
    fi
    parts+=("$f")
  done
  cat "${parts[@]}" > "$STAGE/$NAME"
  echo "$SHA  $STAGE/$NAME" | sha256sum -c -
}

case "${1:-}" in
  prepare)
    gguf=${GGUF:-$(${PYTHON:-python} -c 'from koala_core.model import default_gguf; print(default_gguf())')}
    if [[ "$PARTS" != /* ]]; then  # inside the checkout: keep it out of git and out of every call
      exclude=$(git rev-parse --git-path info/exclude)
      mkdir -p "$(dirname "$exclude")"
      grep -qxF "/$PARTS/" "$exclude" 2>/dev/null || echo "/$PARTS/" >> "$exclude"
    fi
    rm -rf "$PARTS" && mkdir -p "$PARTS/wheels"
    # transformers reads GGUF through the `gguf` package (pure Python; numpy and pyyaml are on the
    # image, requests is imported only for downloads)
    if [ "${KOALA_GPU_WHEELS:-download}" = download ]; then
      ${PYTHON:-python} -m pip download -q --no-deps -d "$PARTS/wheels" gguf==0.19.0
    fi
    size=$(stat -c %s "$gguf")
    room=$((LIMIT - $(travelling) - $(du -sb "$PARTS/wheels" | cut -f1) - MARGIN))
    if ((room <= 0)); then
      echo "the working tree alone fills a call's $LIMIT bytes: nothing is left for the model" >&2
      exit 1
    fi
    k=$(((size + room - 1) / room))
    split -n "$k" -d -a 2 "$gguf" "$PARTS/part-"
    for ((i = 1; i <= k; i++)); do
      mkdir "$PARTS/p$i"
      mv "$(printf '%s/part-%02d' "$PARTS" $((i - 1)))" "$PARTS/p$i/"
      echo "$k" > "$PARTS/p$i/count"
    done
    mv "$PARTS/wheels" "$PARTS/p1/"
    echo "$size bytes in $k parts of <= $room; make these calls back to back (each within ~30 s of the last):"
    for ((i = 1; i < k; i++)); do
      echo "  run(command=\"bash benchmarks/gpu_machine.sh stage\", carry=[\"$PARTS/p$i\"], timeout_s=120)"
    done
    echo "  run(command=\"bash benchmarks/gpu_machine.sh run\", carry=[\"$PARTS/p$k\"], timeout_s=540)"
    echo "     (or, to train heads instead of the check: ... gpu_machine.sh train ..., timeout_s=580)"
    echo "  give_back()"
    ;;
  travel) travelling ;;
  stage) stage ;;
  join) join ;;
  run | train)
    join
    wheels=("$STAGE"/wheels/*.whl)
    if ((${#wheels[@]})); then pip install -q --no-deps --no-index "${wheels[@]}"; fi
    pip install -q --no-deps --no-build-isolation -e .
    nvidia-smi --query-gpu=name,memory.total --format=csv
    export KOALA_CACHE="$STAGE/cache" PYTHONUNBUFFERED=1
    if [ "$1" = run ]; then
      python benchmarks/gpu_check.py "${OUT:-gpu-report}" --model "$STAGE/$NAME"
    else  # ~500 s in all: data, training side by side, evaluation, the heads into $OUT/heads
      python benchmarks/gpu_train.py "${OUT:-gpu-train}" --model "$STAGE/$NAME" --work "$STAGE/work"
    fi
    ;;
  *)
    echo "usage: bash benchmarks/gpu_machine.sh prepare|stage|run|train|join|travel" >&2
    exit 2
    ;;
esac
