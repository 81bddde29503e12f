"""What an install looks like from outside: the tracked tree stays small enough to travel, the
Python floor in pyproject holds, and a wheel install (not a source checkout) finds the shipped
heads and every built-in plugin."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIMIT_MIB = 40  # the GPU machine takes 64 MiB in all; the model (98 MB) travels in two halves


def test_tracked_tree_stays_under_the_limit():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    total = sum((ROOT / f).stat().st_size for f in files if f and (ROOT / f).is_file())
    assert total < LIMIT_MIB * 2**20, f"tracked files weigh {total / 2**20:.1f} MiB"


def test_the_python_floor_holds():
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    floor = tuple(int(x) for x in re.fullmatch(r">=(\d+)\.(\d+)", spec).groups())
    assert sys.version_info[:2] >= floor


@pytest.mark.slow
def test_a_wheel_install_finds_the_shipped_heads(tmp_path):
    import shutil

    src = tmp_path / "src"  # build from a copy: setuptools leaves build/ folders in its source
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info",
                                                             ".koala-cache", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("koala-*.whl"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                    str(wheel)], check=True, capture_output=True)
    code = """
import koala_core, json
from koala_core.shipped import default_checkpoint, shipped_checkpoints
from koala_core.registry import Registry
reg = Registry.from_entry_points()
print(json.dumps({"core": koala_core.__file__, "default": default_checkpoint("default"),
                  "shipped": sorted(shipped_checkpoints()), "heads": reg.names("heads"),
                  "medusa": reg.get("heads", "medusa").cls.__module__}))
"""
    # the installed copy comes first on the path; run from elsewhere so the checkout is not seen
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, check=True)
    found = __import__("json").loads(out.stdout)
    assert found["core"].startswith(str(site))
    assert found["default"] and found["default"].startswith(str(site))
    assert {"eagle-k1", "hydra-k1", "medusa-k1"} <= set(found["shipped"])
    assert {"eagle", "hydra", "lookup", "medusa"} <= set(found["heads"])
