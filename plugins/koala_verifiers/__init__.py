"""Built-in verifiers: ``greedy`` and ``rejection`` (both lossless) and ``typical`` (LOSSY)."""

from koala_core.hookspecs import hookimpl


@hookimpl
def register_verifiers(register):
    from .verifiers import GreedyVerifier, RejectionVerifier, TypicalVerifier

    register("greedy", GreedyVerifier)
    register("rejection", RejectionVerifier)
    register("typical", TypicalVerifier)
