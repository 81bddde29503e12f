"""How often a copy proposal is right: for every assistant position of a prepared set, the longest
suffix n-gram (5 down to 1 token) that occurred earlier in the conversation, and whether what
followed it is the target's own next token (the label), by n and by whether the n-gram had one
follower. Teacher-forced, no model needed; the figures behind ``koala_trees.copy.RELIABILITY``.

    python benchmarks/copy_reliability.py [--data DIR] [--shards 3] [--conversations 40]
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

from safetensors.torch import load_file

from koala_core.model import cache_dir
from koala_core.ngrams import longest_match


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(cache_dir() / "data" / "heldout-skip10000"))
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--conversations", type=int, default=40, help="per shard")
    args = ap.parse_args()
    folder = Path(args.data)
    manifest = json.loads((folder / "manifest.json").read_text())
    stats = collections.defaultdict(lambda: [0, 0])
    positions = 0
    for name in manifest["shards"][: args.shards]:
        shard = load_file(folder / name)
        ids, labels, mask = shard["input_ids"], shard["labels"], shard["loss_mask"]
        start = 0
        for length in shard["lengths"].tolist()[: args.conversations]:
            for t in range(start + 8, start + length):
                if not mask[t]:
                    continue
                positions += 1
                n, found = longest_match(ids[start:t + 1], 5, 1)
                if found:
                    token, share = found[0]
                    cell = stats[(n, share == 1)]
                    cell[0] += int(token == int(labels[t]))
                    cell[1] += 1
            start += length
    print(f"{positions} assistant positions of {folder.name}")
    print("| n | followers | proposals (share of positions) | right |")
    print("|---:|---|---:|---:|")
    for (n, one), (hits, trials) in sorted(stats.items()):
        print(f"| {n} | {'one' if one else 'several'} | {trials} ({trials / positions:.3f}) | "
              f"{hits / trials:.3f} |")


if __name__ == "__main__":
    main()
