"""Config dataclasses: build them from user options, reject unknown keys, coerce CLI strings."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from .errors import ConfigError


@dataclasses.dataclass(frozen=True)
class NoConfig:
    """A component with no options."""


def config_class(cls: type) -> type:
    return getattr(cls, "Config", NoConfig)


def describe_options(cls: type) -> list[dict[str, Any]]:
    """Each option of a component: name, type, default and help (from field metadata)."""
    out = []
    for f in dataclasses.fields(config_class(cls)):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        out.append({"name": f.name, "type": _type_name(f.type), "default": default,
                    "help": f.metadata.get("help", "")})
    return out


def _type_name(tp: Any) -> str:
    return tp if isinstance(tp, str) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    if isinstance(tp, str):
        tp = {"int": int, "float": float, "bool": bool, "str": str}.get(tp, None)
    if tp is None or not isinstance(value, str):
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if tp in (int, float, bool, str) and not isinstance(value, tp):
            raise ConfigError(f"{where}: option {key!r} must be {tp.__name__}, got {value!r}")
        return value
    try:
        if tp is bool:
            low = value.lower()
            if low not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(value)
            return low in ("1", "true", "yes")
        if tp in (int, float, str):
            return tp(value)
    except ValueError:
        raise ConfigError(f"{where}: option {key!r} must be {tp.__name__}, got {value!r}") from None
    return value


def coerce_options(config_cls: type, options: dict[str, Any], where: str = "component") -> dict:
    """``options`` typed for the fields of dataclass ``config_cls``; unknown keys are errors."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        valid = ", ".join(sorted(fields)) or "(none)"
        raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)}; valid options: {valid}")
    hints = typing.get_type_hints(config_cls)
    return {k: _coerce(v, hints.get(k, fields[k].type), k, where) for k, v in options.items()}


def build_config(cls: type, options: dict[str, Any], where: str = "component"):
    """``cls.Config(**options)`` with unknown keys and bad values reported clearly."""
    config_cls = config_class(cls)
    values = coerce_options(config_cls, options, where)
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


# what a trained head may draft in (koala_core.kernels.draft_dtype resolves them)
DRAFT_DTYPES = ("auto", "float32", "bfloat16", "int8", "int8-dynamic")


def check_draft_dtype(choice: str) -> None:
    if choice not in DRAFT_DTYPES:
        raise ConfigError(f"unknown draft dtype {choice!r}; choose one of {', '.join(DRAFT_DTYPES)}")
