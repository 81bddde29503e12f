"""The documents point at files that exist: every repository path the README, DEVELOPERS.md and
docs/*.md name (a script, a recipe, a prompt set, a results folder) is in the tree, so moving or
renaming a file cannot leave a command in the docs that fails."""

from __future__ import annotations

import itertools
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "DEVELOPERS.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP = ("benchmarks", "recipes", "bench-results", "checkpoints", "koala_core", "plugins", "tests",
       "examples", "docs")
# a repository path, possibly a comma-separated list of them (a --methods value) or with a
# shell brace list ({9,10,11}); not a path inside $KOALA_CACHE, ~ or another folder
PATH = re.compile(r"(?<![\w$/.~{-])((?:%s)/(?:[\w./-]|\{[\w,]*\})*)" % "|".join(TOP))
# `koala compose ... -o FILE` writes FILE and `koala ablate ... --out DIR` writes under DIR: later
# lines may name what a command in the same document makes
MADE = re.compile(r"(?:-o|--out) (\S+)")


def tracked() -> set[str]:
    """Every path git tracks or would add (not ignored), with each of its parent folders: what a
    clean clone has once the change is committed (a file that exists here only because this
    checkout made it, say a git-ignored checkpoint, does not count)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, check=True)
    paths = set()
    for f in out.stdout.decode().split("\0"):
        parts = f.split("/")
        paths.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return paths


def exists(path: str, tree: set[str], made: set[str]) -> bool:
    path = path.rstrip("/")
    return path in tree or any(path == m or path.startswith(m.rstrip("/") + "/") for m in made)


def expand(path: str) -> list[str]:
    """`a-{9,10}/` -> `a-9/`, `a-10/`."""
    parts = re.split(r"\{([\w,]*)\}", path)
    choices = [p.split(",") if i % 2 else [p] for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def named_paths(text: str) -> set[str]:
    found = set()
    for m in PATH.finditer(text):
        for item in re.split(r",(?![^{]*\})", m.group(1)):  # commas outside braces split a list
            for path in expand(item.rstrip(".")):
                if "/" in path and not re.search(r"-N\b", path):  # -N: a placeholder
                    found.add(path)
    return found


def test_named_paths_finds_lists_and_braces():
    text = ("`koala bench --methods vanilla,recipes/a.toml,benchmarks/recipes/b.toml "
            "--out bench-results/x` and `bench-results/mixed-heldout-{9,10}/`, "
            "`$KOALA_CACHE/runs/eagle-k1-4m` and `mixed-heldout-N.jsonl`.")
    assert named_paths(text) == {"recipes/a.toml", "benchmarks/recipes/b.toml", "bench-results/x",
                                 "bench-results/mixed-heldout-9/", "bench-results/mixed-heldout-10/"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_path_a_document_names_exists(doc):
    text = doc.read_text()
    made = set(MADE.findall(text))
    tree = tracked() if (ROOT / ".git").exists() else None
    missing = sorted(p for p in named_paths(text)
                     if not (exists(p, tree, made) if tree is not None else (ROOT / p).exists()))
    assert not missing, f"{doc.name} names files that are not in the tree: {missing}"


def test_exists_counts_tracked_paths_and_what_a_command_makes():
    tree = {"bench-results", "bench-results/a", "bench-results/a/results.md"}
    made = {"bench-results/b", "x.safetensors"}
    assert exists("bench-results/a/", tree, made)
    assert exists("bench-results/b/checkpoints/k2", tree, made)  # `koala ablate --out` made it
    assert exists("x.safetensors", tree, made)
    assert not exists("bench-results/a/checkpoints/k2", tree, made)  # git-ignored: not in a clone
    assert not exists("bench-results/bb", tree, made)
