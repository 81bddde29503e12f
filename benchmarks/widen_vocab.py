"""A copy of an EAGLE-1 checkpoint drafting over the target's full vocabulary (same weights: the
head predicts features, which score every LM-head row), to measure what the 8k draft vocabulary
costs, e.g. with `koala eval --checkpoint OUT --prompts FILE --depth 4`.

    python benchmarks/widen_vocab.py checkpoints/eagle-k1 /tmp/eagle-full
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def main(src: str, dst: str) -> None:
    src_path, dst_path = Path(src), Path(dst)
    meta = json.loads((src_path / "koala.json").read_text())
    if meta["plugin"]["name"] != "eagle" or meta["head_config"].get("aux_layers"):
        sys.exit("widen_vocab: only EAGLE-1 heads predict features that score every row")
    shutil.copytree(src_path, dst_path, dirs_exist_ok=True)
    vocab = int(meta["target"]["vocab_size"])
    state = load_file(str(src_path / "model.safetensors"))
    state["vocab_ids"] = torch.arange(vocab)
    save_file(state, str(dst_path / "model.safetensors"))
    meta["head_config"]["draft_vocab"], meta["draft_vocab_size"] = 0, vocab
    (dst_path / "koala.json").write_text(json.dumps(meta, indent=2))
    print(f"{dst_path}: {src_path.name} drafting over all {vocab} tokens")


if __name__ == "__main__":
    main(*sys.argv[1:3])
