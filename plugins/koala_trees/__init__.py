"""Built-in tree policies: ``chain``, ``static`` (Medusa-style choice lists), ``dynamic`` (EAGLE-2)
and ``auto`` (sized from measured acceptance and costs, with a floor at plain decoding)."""

from koala_core.hookspecs import hookimpl


@hookimpl
def register_tree_policies(register):
    from .auto import AutoPolicy
    from .policies import ChainPolicy, DynamicPolicy, StaticPolicy

    register("chain", ChainPolicy)
    register("static", StaticPolicy)
    register("dynamic", DynamicPolicy)
    register("auto", AutoPolicy)
