import types

import pytest

from koala_core.errors import PluginError
from koala_core.hookspecs import hookimpl
from koala_core.interfaces import Verifier
from koala_core.registry import KINDS, Registry


def plugin_module(name: str, verifier_names: list[str]):
    mod = types.ModuleType(name)

    class V(Verifier):
        """A test verifier."""

        def verify(self, *a):  # pragma: no cover - never called
            raise AssertionError

    @hookimpl
    def register_verifiers(register):
        for n in verifier_names:
            register(n, V)

    mod.register_verifiers = register_verifiers
    return mod


def test_builtins_come_from_entry_points(registry):
    assert registry.names("heads") == ["eagle", "hydra", "lookup", "medusa"]
    assert registry.names("losses") == ["ce", "feature", "kd"]
    assert registry.names("tree_policies") == ["auto", "chain", "dynamic", "static"]
    assert registry.names("verifiers") == ["greedy", "rejection", "typical"]
    info = registry.get("verifiers", "greedy")
    assert info.package == "koala" and info.version
    assert registry.get("verifiers", "typical").lossy
    assert not registry.get("verifiers", "rejection").lossy


def test_duplicate_name_names_both_providers():
    reg = Registry()
    reg.add(plugin_module("a", ["same"]), name="plugin-a", package="pkg-a", version="1")
    reg.add(plugin_module("b", ["same"]), name="plugin-b", package="pkg-b", version="2")
    with pytest.raises(PluginError) as err:
        reg.all()
    msg = str(err.value)
    assert "plugin-a" in msg and "plugin-b" in msg and "pkg-a" in msg and "pkg-b" in msg


def test_duplicate_with_builtin_is_an_error(registry):
    registry.add(plugin_module("c", ["greedy"]), name="mine", package="my-pkg")
    with pytest.raises(PluginError, match="greedy.*registered twice"):
        registry.names("verifiers")


def test_unknown_name_lists_known(registry):
    with pytest.raises(PluginError) as err:
        registry.get("verifiers", "nope")
    assert "greedy" in str(err.value) and "rejection" in str(err.value)


def test_fresh_registry_is_isolated():
    reg = Registry()
    reg.add(plugin_module("d", ["only-here"]), name="d")
    assert reg.names("verifiers") == ["only-here"]
    assert all(reg.names(k) == [] for k in KINDS if k != "verifiers")
    assert "only-here" not in Registry.from_entry_points().names("verifiers")


def test_every_hook_is_documented():
    from koala_core import hookspecs

    for hook in KINDS.values():
        doc = getattr(hookspecs, hook).__doc__
        assert doc and ":param register:" in doc, hook


def test_create_rejects_unknown_options(registry):
    from koala_core.errors import ConfigError

    with pytest.raises(ConfigError, match="valid options: copy, depth"):
        registry.create("tree_policies", "chain", {"width": 3})
    with pytest.raises(ConfigError, match="depth must be >= 1"):
        registry.create("tree_policies", "chain", {"depth": "0"})
    assert registry.create("tree_policies", "chain", {"depth": "3"}).config.depth == 3
