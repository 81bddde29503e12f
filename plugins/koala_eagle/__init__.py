"""Built-in head ``eagle``: feature-level autoregressive drafting with K decoder layers."""

from koala_core.hookspecs import hookimpl


@hookimpl
def register_heads(register):
    from .head import EagleHead

    register("eagle", EagleHead)
