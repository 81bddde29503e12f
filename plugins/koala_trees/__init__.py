"""Built-in tree policies: ``chain``, ``static`` (Medusa-style choice lists) and ``dynamic`` (EAGLE-2)."""

from koala_core.hookspecs import hookimpl


@hookimpl
def register_tree_policies(register):
    from .policies import ChainPolicy, DynamicPolicy, StaticPolicy

    register("chain", ChainPolicy)
    register("static", StaticPolicy)
    register("dynamic", DynamicPolicy)
