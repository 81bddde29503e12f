"""Microbenchmark of the LM-head matmul (49152 x 576) for 1..16 rows: MKL fp32, oneDNN-prepacked
fp32 (MkldnnLinear) and bf16 (the README's "what was tried" list).

    python benchmarks/linear_kernels.py
"""

import timing  # benchmarks/timing.py (this folder is on sys.path when run as a script)
import torch
from torch.utils import mkldnn


def timed(fn) -> float:
    return timing.timed(fn, reps=30, warmup=5)


def main() -> None:
    torch.set_num_threads(2)
    lin = torch.nn.Linear(576, 49152, bias=False)
    packed = mkldnn.MkldnnLinear(lin, torch.float32)
    lin16 = torch.nn.Linear(576, 49152, bias=False).to(torch.bfloat16)
    print("rows  mkl-fp32-ms  onednn-fp32-ms  bf16-ms")
    with torch.no_grad():
        for n in (1, 2, 4, 8, 16):
            x = torch.randn(n, 576)
            print(f"{n:>4} {timed(lambda: lin(x)):>12.2f} {timed(lambda: packed(x)):>15.2f} "
                  f"{timed(lambda: lin16(x.bfloat16())):>8.2f}")


if __name__ == "__main__":
    main()
