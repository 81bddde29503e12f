"""One method against the best of some others, category by category, from a `koala bench` results
folder: the speed issue's rule that `auto` is never more than 3 % slower than the best hand-picked
tree on any prompt category.

    python benchmarks/category_gaps.py bench-results/mixed-heldout-27 \
        --method eagle-k1-auto-copy3 --against eagle-k1,eagle-k1-deep

Per category: the best of ``--against`` by median speedup, and the method's gap to it on three
measures: the median speedup (each prompt over plain decoding's run of it), tokens per second
over the category's prompts, and the *paired* median (per prompt, the method's time per token
against the other's on the same prompt: plain decoding's noise drops out). Beside them, the
controls a method listed twice gives (``NAME-again``): the method against its own second run, the
best against its own, and plain decoding against itself. A gap is worth reading only where it is
larger than those.
"""

import argparse
import statistics

from koala_core.bench import read_results


def pct(a: float, b: float) -> str:
    return f"{100 * (a / b - 1):+.1f} %"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--method", required=True)
    ap.add_argument("--against", required=True, help="comma-separated method names")
    args = ap.parse_args()
    results = read_results(args.folder)
    against = args.against.split(",")
    prompts = results["per_prompt"]
    names = {m["method"] for m in results["methods"]}
    for name in [args.method, *against]:
        if name not in names:
            raise SystemExit(f"{name!r} is not in {args.folder} (methods: {', '.join(sorted(names))})")

    def paired(a: str, b: str, cat: str) -> float:
        return statistics.median(p["speedup"][a] / p["speedup"][b] for p in prompts
                                 if p["category"] == cat)

    def control(a: str, cat: str) -> str:
        again = f"{a}-again"
        return pct(paired(again, a, cat), 1.0) if again in names else "-"

    print(f"| category | best of {', '.join(against)} | {args.method} against it: median / "
          f"tokens/s / paired | {args.method} again | best again | plain again |")
    print("|---|---|---|---:|---:|---:|")
    for cat, rows in sorted(results.get("by_category", {}).items()):
        row = {r["method"]: r for r in rows}
        best = max(against, key=lambda n: row[n]["speedup"]["median"])
        a, b = row[args.method], row[best]
        gaps = (pct(a["speedup"]["median"], b["speedup"]["median"]),
                pct(a["tokens_per_s"], b["tokens_per_s"]), pct(paired(args.method, best, cat), 1.0))
        print(f"| {cat} | {best} | {' / '.join(gaps)} | {control(args.method, cat)} | "
              f"{control(best, cat)} | {control('vanilla', cat)} |")


if __name__ == "__main__":
    main()
