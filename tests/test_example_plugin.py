"""The example third-party package is discovered through its entry point, like any installed one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "koala-smooth-ce"


def fake_install(site: Path) -> None:
    """What `pip install` leaves behind: the package importable and a dist-info with entry points."""
    dist = site / "koala_smooth_ce-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: koala-smooth-ce\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[koala]\nsmooth_ce = koala_smooth_ce\n")
    (site / "koala_smooth_ce.pth").write_text(str(EXAMPLE) + "\n")


def test_example_plugin_listed_by_cli(tmp_path):
    fake_install(tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(EXAMPLE)]))
    out = subprocess.run([sys.executable, "-m", "koala_core.cli", "plugins", "--json"],
                         capture_output=True, text=True, env=env, check=True).stdout
    losses = json.loads(out)["losses"]
    assert {"name": "smooth-ce", "package": "koala-smooth-ce", "version": "0.1.0"}.items() <= \
        next(item for item in losses if item["name"] == "smooth-ce").items()


def test_example_loss_works(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import koala_smooth_ce
    from koala_core.registry import Registry

    reg = Registry()
    reg.add(koala_smooth_ce, name="smooth_ce", package="koala-smooth-ce", version="0.1.0")
    loss = reg.create("losses", "smooth-ce", {"smoothing": "0.2"})
    from koala_core.interfaces import DepthOutput

    logits = torch.randn(5, 11, requires_grad=True)
    out = DepthOutput(logits, torch.tensor([0, 3, -1, 10, 2]), torch.ones(5), torch.zeros(5, 4))
    value = loss(out)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value) and logits.grad is not None
