# The one run on mixed-heldout-28, committed before it (fourteenth session): every head's `auto`
# beside its hand-picked trees; EAGLE's `auto` as picked on used prompts (copy-first steps on,
# benchmarks/recipes/eagle-k1-auto-copy-first.toml) and as before (eagle-k1-auto-copy3); the tiny
# tree and the copy-first `auto` each listed twice (their own A/A).
koala bench --prompts benchmarks/prompts/mixed-heldout-28.jsonl --max-new-tokens 64 \
    --methods vanilla,vanilla-again,default,benchmarks/recipes/hydra-k1-dynamic-copy3.toml,eagle-k1,benchmarks/recipes/eagle-k1-auto-copy-first.toml,eagle-k1,benchmarks/recipes/eagle-k1-auto-copy-first.toml,benchmarks/recipes/eagle-k1-auto-copy3.toml,medusa-k1,benchmarks/recipes/medusa-k1-dynamic-copy3.toml,recipes/eagle-k1-deep.toml \
    --out bench-results/mixed-heldout-28
