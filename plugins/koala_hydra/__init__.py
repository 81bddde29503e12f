"""Built-in head ``hydra``: sequentially dependent heads that also read the drafted path."""

from koala_core.hookspecs import hookimpl


@hookimpl
def register_heads(register):
    from .head import HydraHead

    register("hydra", HydraHead)
