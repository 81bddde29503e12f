"""pytest-benchmark suites (not part of the default test run): `make bench-cost`, or
`python -m pytest benchmarks --benchmark-only`. Set KOALA_BENCH_DTYPE=bfloat16 to compare dtypes."""

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def bench_target():
    from koala_core.model import load_target

    return load_target("default", dtype=os.environ.get("KOALA_BENCH_DTYPE", "float32"))
