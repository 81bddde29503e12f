"""The hooks a koala plugin implements, one per kind of component.

Every hook receives a ``register`` callback and calls it once per component::

    register(name: str, cls: type) -> None

``name`` is what users type (``--head medusa``); ``cls`` is the component class (a subclass of the
matching interface in :mod:`koala_core.interfaces`). The core records which plugin package made each
registration, so a duplicate name is an error naming both providers. Plugins are loaded from the
entry-point group ``koala``; the built-in plugins use the same path as third-party packages.
None of these hooks is ``firstresult``: every plugin that implements a hook is called.
"""

import pluggy

hookspec = pluggy.HookspecMarker("koala")
hookimpl = pluggy.HookimplMarker("koala")


@hookspec
def register_heads(register):
    """Register draft heads (:class:`~koala_core.interfaces.DraftHead` subclasses).

    :param register: callback ``register(name, cls)``.
    """


@hookspec
def register_tree_policies(register):
    """Register tree policies (:class:`~koala_core.interfaces.TreePolicy` subclasses).

    :param register: callback ``register(name, cls)``.
    """


@hookspec
def register_verifiers(register):
    """Register verifiers (:class:`~koala_core.interfaces.Verifier` subclasses).

    :param register: callback ``register(name, cls)``.
    """


@hookspec
def register_losses(register):
    """Register supervised losses (:class:`~koala_core.interfaces.Loss` subclasses).

    :param register: callback ``register(name, cls)``.
    """


@hookspec
def register_discriminators(register):
    """Register discriminators (:class:`~koala_core.interfaces.Discriminator` subclasses).

    :param register: callback ``register(name, cls)``.
    """


@hookspec
def register_adversarial_losses(register):
    """Register adversarial losses (:class:`~koala_core.interfaces.AdversarialLoss` subclasses).

    :param register: callback ``register(name, cls)``.
    """
