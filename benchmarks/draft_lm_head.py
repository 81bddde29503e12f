"""Microbenchmark of a draft head's LM-head rows (8192 x 576, the shipped draft vocabulary) for 1,
4 and 16 rows: fp32 dense (MKL), fp32 through koala's prepacked oneDNN path, weight-only int8 with
fp32 and with bf16 activations (torch's ``_weight_int8pack_mm``, what ``--draft-dtype int8`` runs),
bf16 dense, and int8 weights with int8 activations (fbgemm's dynamically quantised linear, what
``--draft-dtype int8-dynamic`` runs; where this torch has it). It shows which draft dtype pays on a CPU, e.g. one without native bf16 (README,
"Speed on this hardware").

    python benchmarks/draft_lm_head.py
"""

import timing  # benchmarks/timing.py (this folder is on sys.path when run as a script)
import torch

from koala_core.kernels import (DynamicInt8Weight, dynamic_int8_available, pack, packed_linear,
                                quantize_rows)


def timed(fn) -> float:
    return timing.timed(fn, reps=300, warmup=20)


def main() -> None:
    torch.set_num_threads(2)
    w = torch.randn(8192, 576) * 0.05
    packed = pack(w, None)
    q, scale = quantize_rows(w)
    wide, w16 = scale.float(), w.bfloat16()
    mm = torch.ops.aten._weight_int8pack_mm
    dynamic = DynamicInt8Weight(lambda: w) if dynamic_int8_available() else None
    print("rows  fp32-dense  fp32-onednn  int8-fp32act  int8-bf16act  bf16-dense  int8-dynamic   (ms)")
    with torch.no_grad():
        for rows in (1, 4, 16):
            x = torch.randn(rows, 576)
            xb = x.bfloat16()
            times = [timed(lambda: torch.nn.functional.linear(x, w)),
                     timed(lambda: packed_linear(x, packed)),
                     timed(lambda: mm(x, q, wide)),
                     timed(lambda: mm(xb, q, scale)),
                     timed(lambda: torch.nn.functional.linear(xb, w16)),
                     timed(lambda: dynamic(x)) if dynamic else float("nan")]
            print(f"{rows:>4} " + " ".join(f"{t:>12.3f}" for t in times))


if __name__ == "__main__":
    main()
