"""The wall-clock helper of the microbenchmark scripts in this folder."""

import time


def timed(fn, reps: int, warmup: int) -> float:
    """Milliseconds per call of ``fn``: ``warmup`` untimed calls, then the mean of ``reps``."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3
