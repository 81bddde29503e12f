"""Errors a user can hit. Each message says what to do; programming errors stay assertions."""


class KoalaError(Exception):
    """Base class of every error koala reports to a user (the CLI prints it and exits with code 2)."""


class PluginError(KoalaError):
    """An unknown plugin name, a duplicate registration, or a plugin that fails to load."""


class ConfigError(KoalaError):
    """An unknown option, a value of the wrong type, or an out-of-range value."""


class ModelError(KoalaError):
    """A target model that cannot be found, converted or loaded."""


class PromptError(KoalaError):
    """An empty prompt, or one that does not fit in the model's context."""


class CheckpointError(KoalaError):
    """A missing, corrupt or mismatched head checkpoint."""


class WriteError(KoalaError):
    """A file koala writes could not be written (the old contents stay as they were)."""
