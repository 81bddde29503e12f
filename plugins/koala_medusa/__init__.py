"""Built-in head ``medusa``: independent heads predicting tokens t+2, t+3, ... from h_t."""

from koala_core.hookspecs import hookimpl


@hookimpl
def register_heads(register):
    from .head import MedusaHead

    register("medusa", MedusaHead)
