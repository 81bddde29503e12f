"""What the target's verify step costs with and without koala's two changes to how it runs: sibling
projections in one oneDNN call (q/k/v, gate/up: ``koala_core/kernels.py``) and masked
grouped-query attention on the key/value heads (``koala_core/attention.py``). The real default
model, fp32, a 256-token cache, n tree nodes with their mask (a balanced binary tree, as `koala
cost`), every setup and size once per round (interleaved), median over the rounds; first the cost
of one oneDNN call on a tiny weight, which is what fusing saves per call. All four setups give the
same logits bit for bit (checked here too).

    python benchmarks/verify_paths.py [--rounds 9]
"""

import argparse
import statistics
import time

import timing  # benchmarks/timing.py (this folder is on sys.path when run as a script)
import torch

from koala_core import kernels
from koala_core.model import load_target
from koala_core.tree import tree_shape


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--sizes", default="1,2,4,8,12,16")
    args = parser.parse_args()
    torch.set_num_threads(2)
    sizes = [int(s) for s in args.sizes.split(",")]

    tiny, x = kernels.pack(torch.randn(8, 576)), torch.randn(1, 576)
    with torch.no_grad():
        ms = timing.timed(lambda: kernels.packed_linear(x, tiny), reps=2000, warmup=50)
    print(f"one oneDNN call on an 8 x 576 weight, 1 row: {1e3 * ms:.0f} us")

    target = load_target()
    if target.kernels != "onednn":
        raise SystemExit("needs the oneDNN kernels (an fp32 CPU target)")
    groups = {m: m._group for m in target.model.modules() if getattr(m, "_group", None)}
    grouped_attention = target.attention

    def setup(fused: bool, grouped: bool) -> None:
        for member, group in groups.items():
            member._group = group if fused else None
        target.model.set_attn_implementation(grouped_attention if grouped else "sdpa")

    setups = {"neither": (False, False), "fused projections": (True, False),
              "grouped attention": (False, True), "both (koala)": (True, True)}
    gen = torch.Generator().manual_seed(0)
    context = 256
    cache = target.new_cache(context + max(sizes))
    target.forward(torch.randint(0, target.vocab_size, (context,), generator=gen), cache)
    trees = {n: tree_shape((-1,) + tuple((i - 1) // 2 for i in range(1, n))) for n in sizes}
    ids = {n: torch.randint(0, target.vocab_size, (n,), generator=gen) for n in sizes}

    def verify(n: int) -> torch.Tensor:
        tree = trees[n]
        out = target.logits(target.forward(ids[n], cache, positions=tree.depths + context,
                                           tree_mask=tree.mask if n > 1 else None))
        target.keep(cache, context, [])
        return out

    reference = {}
    for name, flags in setups.items():  # same logits, bit for bit
        setup(*flags)
        for n in sizes:
            out = verify(n)
            assert torch.equal(reference.setdefault(n, out), out), (name, n)
    times = {(name, n): [] for name in setups for n in sizes}
    for r in range(args.rounds + 1):  # round 0 warms up
        for name, flags in setups.items():
            setup(*flags)
            for n in sizes:
                t0 = time.perf_counter()
                verify(n)
                if r:
                    times[name, n].append(time.perf_counter() - t0)
    print(f"\nverify(n) ms, median of {args.rounds} interleaved rounds (x decode step of 'neither')")
    print(f"{'setup':>18} " + " ".join(f"{'n=' + str(n):>13}" for n in sizes))
    base = 1e3 * statistics.median(times["neither", 1])
    for name in setups:
        cells = []
        for n in sizes:
            ms = 1e3 * statistics.median(times[name, n])
            cells.append(f"{ms:6.1f} ({ms / base:.2f})")
        print(f"{name:>18} " + " ".join(f"{c:>13}" for c in cells))


if __name__ == "__main__":
    main()
