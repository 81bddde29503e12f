"""Built-in training-free drafter ``lookup``: prompt-lookup (n-gram) drafting from the context."""

from koala_core.hookspecs import hookimpl


@hookimpl
def register_heads(register):
    from .lookup import LookupHead

    register("lookup", LookupHead)
