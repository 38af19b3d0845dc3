"""The small exception hierarchy of forewarn: user-facing errors say what is wrong and the fix."""


class ForewarnError(Exception):
    """Base of every error forewarn raises on purpose."""


class ConfigError(ForewarnError):
    """A config value, file or override is invalid; the message names the field and the fix."""


class BackendUnavailable(ForewarnError):
    """A generation backend cannot be used here (e.g. vllm is not installed)."""


class ModelNotFound(ForewarnError):
    """A model path, hub id or testbed name does not resolve to local weights."""
