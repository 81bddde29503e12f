"""koala's Python API end to end: compose a recipe, cache the target's outputs, train a small KOALA
head (2 layers + a discriminator) for a few minutes, generate with it, and benchmark it against
plain greedy decoding on the same prompts.

    python examples/api_tour.py                         # real model, a few minutes on 2 cores
    python examples/api_tour.py --steps 30 --tokens 6000  # about 2 minutes: a first look

Everything it writes goes under --work (default: a fresh temporary folder).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from koala_core.bench import run_bench
from koala_core.checkpoint import load_head
from koala_core.compose import build_method
from koala_core.data import PrepareConfig, prepare
from koala_core.engine import GenerationConfig, SpeculativeEngine
from koala_core.model import load_target
from koala_core.prompts import encode_prompt
from koala_core.recipe import Recipe, Slot
from koala_core.registry import default_registry
from koala_core.training import train

PROMPTS = ["Give me three tips for writing clear emails.",
           "Explain what a hash table is to a new programmer.",
           "Write a short story about a koala who learns to swim."]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--sharegpt", default=None, help="ShareGPT JSON (default: the installed package)")
    ap.add_argument("--tokens", type=int, default=20_000, help="target tokens to cache for training")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--draft-vocab", type=int, default=4096)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--work", default=None)
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="koala-tour-"))
    registry = default_registry()

    # 1. Compose: one plugin of each kind, checked against their config dataclasses.
    recipe = Recipe(
        model=args.model,
        head=Slot("eagle", {"layers": 2, "draft_vocab": args.draft_vocab}),
        tree=Slot("static", {"preset": "tiny"}), verifier=Slot("greedy"),
        discriminator=Slot("logit-mlp"), adv_loss=Slot("bce"),
        train={"steps": args.steps, "batch_size": 4, "window": 128, "eval_every": args.steps,
               "adv_warmup": args.steps // 4},
    ).validate(registry)
    recipe.save(work / "recipe.toml")
    print(f"recipe: {work / 'recipe.toml'}")

    # 2. Cache what training needs: the frozen target's hidden states, labels and top-k.
    target = load_target(recipe.model)
    prepare(target, work / "data", PrepareConfig(max_tokens=args.tokens, max_length=256, topk=8),
            data=args.sharegpt)

    # 3. Train (supervised + adversarial), written as a checkpoint folder.
    metrics = train(target, work / "data", work / "head", recipe.train_config(),
                    tree=(recipe.tree.name, dict(recipe.tree.options)))
    print(f"validation top-1: {metrics['val_top1'][0]:.3f}")

    # 4. Generate with it: greedy speculative output equals plain greedy output.
    policy = registry.create("tree_policies", recipe.tree.name, recipe.tree.options)
    engine = SpeculativeEngine(target, load_head(work / "head", target, registry), policy,
                               registry.create("verifiers", recipe.verifier.name))
    ids = encode_prompt(target.tokenizer, PROMPTS[0])
    result = engine.generate(ids, GenerationConfig(max_new_tokens=args.max_new_tokens))
    print(target.tokenizer.decode(result.token_ids, skip_special_tokens=True))
    print(f"tau {result.tau:.2f}")

    # 5. Benchmark against plain greedy decoding, interleaved on the same prompts.
    methods = [build_method("vanilla", target, registry), build_method(str(work / "head"), target, registry)]
    results = run_bench(methods, target, [{"prompt": p} for p in PROMPTS],
                        GenerationConfig(max_new_tokens=args.max_new_tokens))
    for m in results["methods"]:
        print(f"{m['method']:>12}: tau {m['tau'] or 1:.2f}  speedup {m['speedup']['median']:.2f}x  "
              f"identical {m['identical_to_vanilla']:.0%}")
    return results


if __name__ == "__main__":
    main()
