"""benchmarks/tree_counterfactual.py grades a tree as a greedy verify would."""

import importlib.util
from pathlib import Path

from koala_core.tree import Tree

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "tree_counterfactual.py"


def test_a_tree_is_graded_by_its_longest_path_along_the_continuation():
    spec = importlib.util.spec_from_file_location("tree_counterfactual", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tree = Tree(7)
    a = tree.add(0, 1)  # root -> 1 -> 2 -> 3, and root -> 4 -> 5
    b = tree.add(a, 2)
    tree.add(b, 3)
    c = tree.add(0, 4)
    tree.add(c, 5)
    assert module.accepted(tree, [1, 2, 3, 9]) == 4  # three drafts and the target's own token
    assert module.accepted(tree, [4, 5]) == 3
    assert module.accepted(tree, [4, 6]) == 2
    assert module.accepted(tree, [8]) == 1
    assert module.accepted(tree, [1, 2]) == 3  # the continuation ends: what it confirms counts
