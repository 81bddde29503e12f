"""Is a new held-out prompt file really unseen? Word-set Jaccard similarity of each of its prompts
against every prompt the project has used (every file in benchmarks/prompts/, MT-bench, GSM8K);
prompts above the threshold are printed and the exit status is 1.

    python benchmarks/prompt_overlap.py NEW.jsonl [--threshold 0.30]

Run it before committing a new set (each set is committed before its one run on it).
"""

import argparse
import json
import re
import sys
from pathlib import Path

from koala_core.bench import select_prompts

PROMPTS = Path(__file__).resolve().parent / "prompts"


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def used_prompts(exclude: Path) -> list[tuple[str, str]]:
    seen = []
    for path in sorted(PROMPTS.glob("*.jsonl")):
        if path.resolve() != exclude.resolve():
            seen += [(path.name, json.loads(line)["prompt"]) for line in path.open() if line.strip()]
    for spec in ("mtbench", "gsm8k"):
        seen += [(spec, p.get("prompt") or " ".join(p.get("turns", [])))
                 for p in select_prompts(spec, 0, 10**6)]
    return seen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("file", type=Path)
    ap.add_argument("--threshold", type=float, default=0.30)
    args = ap.parse_args()
    new = [json.loads(line) for line in args.file.open() if line.strip()]
    seen = [(source, text, words(text)) for source, text in used_prompts(args.file)]
    close = 0
    for item in new:
        mine = words(item["prompt"])
        score, source, text = max((len(mine & w) / len(mine | w), s, t) for s, t, w in seen)
        if score > args.threshold:
            close += 1
            print(f"{score:.2f} {item.get('id')}: {source}: {text[:90]}")
    print(f"{close} of {len(new)} prompts above {args.threshold} "
          f"(against {len(seen)} used prompts)")
    return 1 if close else 0


if __name__ == "__main__":
    sys.exit(main())
