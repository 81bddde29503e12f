"""Plugin registry: loads the entry-point group ``koala`` through pluggy and owns names and provenance.

Every plugin (built-in or third-party) is a module with ``@hookimpl`` functions from
:mod:`koala_core.hookspecs`. The registry calls each implementation with its own ``register``
callback, so it knows which package provided every component and can name both sides of a clash.
"""

from __future__ import annotations

import importlib.metadata as md
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError

GROUP = "koala"

# kind -> hook name; the kind names are the keys of `koala plugins --json`.
KINDS: dict[str, str] = {
    "heads": "register_heads",
    "tree_policies": "register_tree_policies",
    "verifiers": "register_verifiers",
    "losses": "register_losses",
    "discriminators": "register_discriminators",
    "adversarial_losses": "register_adversarial_losses",
}


LABELS = {"heads": "head", "tree_policies": "tree policy", "verifiers": "verifier", "losses": "loss",
          "discriminators": "discriminator", "adversarial_losses": "adversarial loss"}


@dataclass(frozen=True)
class PluginInfo:
    """One registered component: its kind, name, class and where it came from."""

    kind: str
    name: str
    cls: type
    plugin: str  # the pluggy plugin (entry-point) name
    package: str
    version: str

    @property
    def summary(self) -> str:
        doc = (self.cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    @property
    def lossy(self) -> bool:
        return bool(getattr(self.cls, "lossy", False))

    def as_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "package": self.package, "version": self.version,
               "summary": self.summary}
        if self.kind == "verifiers":
            out["lossy"] = self.lossy
        return out


class Registry:
    """Components of every kind, collected from a pluggy plugin manager."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self._provenance: dict[str, tuple[str, str]] = {}  # plugin name -> (package, version)
        self._items: dict[str, dict[str, PluginInfo]] | None = None

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def from_entry_points(cls) -> "Registry":
        """A registry holding every plugin installed under the entry-point group ``koala``."""
        reg = cls()
        seen: set[str] = set()
        for dist in md.distributions():
            for ep in dist.entry_points:
                if ep.group != GROUP or ep.name in seen:
                    continue
                seen.add(ep.name)
                try:
                    module = ep.load()
                except Exception as exc:  # a broken third-party plugin must say who it is
                    raise PluginError(
                        f"plugin {ep.name!r} ({ep.value}) from package "
                        f"{dist.metadata['Name']!r} failed to load: {exc}. "
                        f"Reinstall or uninstall that package."
                    ) from exc
                reg.add(module, name=ep.name, package=dist.metadata["Name"], version=dist.version)
        return reg

    def add(self, module: ModuleType | object, name: str, package: str = "(in-process)",
            version: str = "") -> None:
        """Register one plugin object (a module with hook implementations)."""
        if self.pm.get_plugin(name) is not None:
            return
        self.pm.register(module, name=name)
        self._provenance[name] = (package, version)
        self._items = None

    # -- collection ----------------------------------------------------------------------------
    def _collect(self) -> dict[str, dict[str, PluginInfo]]:
        if self._items is not None:
            return self._items
        items: dict[str, dict[str, PluginInfo]] = {kind: {} for kind in KINDS}
        for kind, hook_name in KINDS.items():
            hook = getattr(self.pm.hook, hook_name)
            for impl in reversed(hook.get_hookimpls()):  # registration order
                package, version = self._provenance.get(impl.plugin_name, ("(in-process)", ""))

                def register(name: str, cls: type, _impl=impl, _pkg=package, _ver=version,
                             _kind=kind) -> None:
                    if not isinstance(name, str) or not name:
                        raise PluginError(f"plugin {_impl.plugin_name!r} registered a {_kind} "
                                          f"component with an invalid name {name!r}")
                    old = items[_kind].get(name)
                    if old is not None:
                        raise PluginError(
                            f"{LABELS[_kind]} {name!r} is registered twice: by "
                            f"{old.plugin!r} (package {old.package}) and by {_impl.plugin_name!r} "
                            f"(package {_pkg}). Uninstall one of the two packages."
                        )
                    items[_kind][name] = PluginInfo(_kind, name, cls, _impl.plugin_name, _pkg, _ver)

                impl.function(register=register)
        self._items = items
        return items

    def all(self) -> dict[str, list[PluginInfo]]:
        """Every component, by kind, sorted by name."""
        return {k: sorted(v.values(), key=lambda p: p.name) for k, v in self._collect().items()}

    def names(self, kind: str) -> list[str]:
        return sorted(self._collect()[kind])

    def get(self, kind: str, name: str) -> PluginInfo:
        """The component ``name`` of ``kind``; an unknown name is an error listing the known ones."""
        assert kind in KINDS, kind
        items = self._collect()[kind]
        if name not in items:
            label = LABELS[kind]
            known = ", ".join(sorted(items)) or "none installed"
            raise PluginError(f"unknown {label} {name!r}; known: {known}")
        return items[name]

    def create(self, kind: str, name: str, options: dict[str, Any] | None = None, **kwargs: Any):
        """Instantiate component ``name`` with its config built from ``options``."""
        from .config import build_config

        info = self.get(kind, name)
        config = build_config(info.cls, options or {}, where=f"{LABELS[kind]} {name!r}")
        obj = info.cls(config, **kwargs)
        obj.plugin_name = name
        return obj


@lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The process-wide registry of installed plugins (tests should build their own)."""
    return Registry.from_entry_points()
