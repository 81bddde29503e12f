"""Rebuild the prepared data a checkpoint was trained on from sets that have grown since.

`koala prepare` resumes and extends a set, so a set a head was trained on may hold more shards
today; the head's ``koala.json`` records the sets' hash (their shard lists and prepare settings).
Shards are only ever appended, so the set as it was is a prefix of the set as it is: this script
finds the prefix whose hash is the recorded one and writes it as a *view* (a folder of links to
the shards and a manifest of its own), for `koala train --data` or `koala ablate --baseline` to
compare against the head fairly. Nothing in the source sets is changed.

    python benchmarks/data_as_trained.py --checkpoint $KOALA_CACHE/runs/hydra-k1-1.7m \\
        --data $KOALA_CACHE/data/sharegpt-aux-1m --data $KOALA_CACHE/data/sharegpt-bf16-skip2180 \\
        --out $KOALA_CACHE/data/as-hydra-k1

prints the ``--data`` arguments to use (a set that has not grown is used as it is).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safetensors import safe_open

from koala_core.files import write_json_atomic
from koala_core.training import data_summary, sets_hash


def recorded(checkpoint: Path) -> tuple[str, list[dict]]:
    data = json.loads((checkpoint / "koala.json").read_text())["recipe"]["data"]
    prepare = data["prepare"]
    return data["hash"], prepare if isinstance(prepare, list) else [prepare]


def write_view(source: Path, shards: list[str], config: dict, out: Path) -> Path:
    """A folder with links to ``shards`` of ``source`` and the manifest they had then."""
    manifest = json.loads((source / "manifest.json").read_text())
    tokens = {"train": 0, "val": 0}
    records = {"train": 0, "val": 0}
    for name in shards:
        split = "train" if Path(name).name.startswith("train") else "val"
        with safe_open(source / name, framework="pt") as f:
            lengths = f.get_slice("lengths")
            records[split] += lengths.get_shape()[0]
            tokens[split] += f.get_slice("input_ids").get_shape()[0]
    out.mkdir(parents=True, exist_ok=True)
    for name in shards:
        link = out / name
        if not link.exists():
            link.symlink_to((source / name).resolve())
    view = {**manifest, "config": config, "shards": shards, "tokens": tokens,
            "records": {s: manifest["records"][s][:records[s]] for s in records},
            "complete": True, "exhausted": True, "view_of": str(source.resolve())}
    view.pop("conversations_done", None)  # a view is never resumed
    write_json_atomic(out / "manifest.json", view)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, type=Path)
    ap.add_argument("--data", action="append", required=True, type=Path,
                    help="the sets, in the order the head was trained on them")
    ap.add_argument("--out", required=True, type=Path, help="folder for the views")
    args = ap.parse_args(argv)
    want, configs = recorded(args.checkpoint)
    if len(configs) != len(args.data):
        sys.exit(f"{args.checkpoint} was trained on {len(configs)} set(s), {len(args.data)} given")
    if data_summary(args.data)["hash"] == want:
        print("the sets are as they were:", " ".join(f"--data {d}" for d in args.data))
        return 0
    manifests = [json.loads((d / "manifest.json").read_text()) for d in args.data]
    *first, last = manifests
    # the hash covers each set's shard list and prepare settings (as recorded then: settings added
    # to `koala prepare` since are absent there); the sets but the last are taken whole
    whole = [{"shards": m["shards"], "config": c} for m, c in zip(first, configs)]
    for n in range(1, len(last["shards"]) + 1):
        views = whole + [{"shards": last["shards"][:n], "config": configs[-1]}]
        if sets_hash(views) == want:
            break
    else:
        sys.exit(f"no prefix of {args.data[-1]} (with the other sets whole) gives the hash {want} "
                 f"recorded in {args.checkpoint}: not the sets it was trained on")
    out = []
    for source, view, manifest in zip(args.data, views, manifests):
        if view["shards"] == manifest["shards"] and view["config"] == manifest["config"]:
            out.append(source)
        else:
            out.append(write_view(source, view["shards"], view["config"], args.out / source.name))
    got = data_summary(out)["hash"]
    if got != want:
        sys.exit(f"the views hash to {got}, not {want}")
    print(" ".join(f"--data {d}" for d in out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
