"""koala: speculative decoding with draft heads (Medusa, Hydra, EAGLE), K-layer and adversarial.

The core is light to import: torch and transformers load only when a model or engine is used.
"""

from .errors import CheckpointError, ConfigError, KoalaError, ModelError, PluginError, PromptError

__version__ = "0.1.0"
__all__ = ["KoalaError", "PluginError", "ConfigError", "ModelError", "PromptError",
           "CheckpointError", "__version__"]
