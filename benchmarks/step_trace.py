"""Where each method's decode steps go, by the size of the tree it verified: steps, tokens per step
(tau), median verify and draft ms, from the tree policy's own per-step observations (methods run
one after another per prompt, not interleaved: for a look inside, not for speedups).

``modelled`` prices every step of every method alike: its tree size at the median verify time of
that size over all methods' steps in the run, plus its own draft time. A policy's choices are
then compared without the machine's moment-to-moment noise in the target's forward (which is
most of a step), e.g. two tree policies of one head on a few prompts (``--repeats`` reruns them).
With prompts of several categories it ends with each category's seconds per method (real and
modelled), as speed against the first method listed (+: faster).

    python benchmarks/step_trace.py --prompts benchmarks/prompts/mixed-heldout-15.jsonl \
        --prompts benchmarks/prompts/mixed-heldout-16.jsonl --categories summarisation,extraction \
        --methods lookup,default
"""

import argparse
import collections
import statistics

from koala_core.bench import name_repeats, select_prompts
from koala_core.compose import build_method
from koala_core.engine import GenerationConfig
from koala_core.model import load_target
from koala_core.prompts import encode_prompt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", action="append", required=True)
    ap.add_argument("--categories", default=None)
    ap.add_argument("--methods", default="lookup,default")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--offset", type=int, default=0, help="first prompt of each --prompts")
    ap.add_argument("--limit", type=int, default=None, help="prompts of each --prompts")
    ap.add_argument("--repeats", type=int, default=1, help="runs of every method per prompt")
    args = ap.parse_args()
    target = load_target("default")
    prompts = [p for spec in args.prompts
               for p in select_prompts(spec, args.offset, args.limit, args.categories)]
    steps: dict[str, list[tuple[int, int, float, float, str]]] = {}
    methods = {}
    now = {"category": ""}  # the category of the prompt being generated
    # a method listed twice runs twice, the second as NAME-again (its own A/A), as in `koala bench`
    for method in name_repeats([build_method(spec, target) for spec in args.methods.split(",")]):
        name = method.name
        policy = method.engine.tree_policy
        observe = policy.observe

        def logged(tree, path, draft_s, verify_s, *a, _observe=observe, _name=name, **k):
            steps[_name].append((len(tree), len(path), 1e3 * draft_s, 1e3 * verify_s,
                                 now["category"]))
            return _observe(tree, path, draft_s, verify_s, *a, **k)

        policy.observe = logged
        steps[name], methods[name] = [], method
    config = GenerationConfig(max_new_tokens=args.max_new_tokens)
    for p in prompts:
        ids = encode_prompt(target.tokenizer, p["prompt"])
        now["category"] = p.get("category") or ""
        for _ in range(args.repeats):
            for method in methods.values():
                method.engine.generate(ids, config)
    print(f"{len(prompts)} prompts x {args.repeats}")
    pooled = collections.defaultdict(list)
    for rows in steps.values():
        for size, _, _, v, _ in rows:
            pooled[size].append(v)
    typical = {size: statistics.median(vs) for size, vs in pooled.items()}
    for name, rows in steps.items():
        ms = sum(r[2] + r[3] for r in rows)
        print(f"{name}: {len(rows)} steps, {sum(r[1] for r in rows)} tokens, {ms / 1e3:.1f} s, "
              f"{ms / len(rows):.1f} ms a step (verify {sum(r[3] for r in rows) / len(rows):.1f}, "
              f"draft {sum(r[2] for r in rows) / len(rows):.2f}); modelled "
              f"{sum(r[2] + typical[r[0]] for r in rows) / 1e3:.1f} s")
        by_size = collections.defaultdict(list)
        for size, accepted, d, v, _ in rows:
            by_size[size].append((accepted, d, v))
        for size, xs in sorted(by_size.items()):
            print(f"  tree of {size:>2}: {len(xs):>4} steps, tau {statistics.mean(x[0] for x in xs):.2f}, "
                  f"verify {statistics.median(x[2] for x in xs):.1f} ms, "
                  f"draft {statistics.median(x[1] for x in xs):.1f} ms")
    cats = sorted({r[4] for rows in steps.values() for r in rows})
    if len(cats) > 1:  # per category: seconds (modelled) of each method, against the first listed
        first = next(iter(steps))
        print(f"\nper category: {first}'s seconds (modelled), the others' speed against it:")
        for cat in cats:
            cells = []
            for name, rows in steps.items():
                mine = [r for r in rows if r[4] == cat]
                real, model = sum(r[2] + r[3] for r in mine), sum(r[2] + typical[r[0]] for r in mine)
                if name == first:
                    base = real, model
                    cells.append(f"{name} {real / 1e3:.1f} s ({model / 1e3:.1f})")
                else:
                    cells.append(f"{name} {100 * (base[0] / real - 1):+.1f} % "
                                 f"({100 * (base[1] / model - 1):+.1f} %)")
            print(f"  {cat}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
