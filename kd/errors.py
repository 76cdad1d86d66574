"""Exception types. Every message names the problem and the fix."""


class KDError(Exception):
    """Base class for every error the kd library raises on bad input or a failed run."""


class ConfigError(KDError, ValueError):
    """An invalid configuration value (raised before any data is loaded or training starts)."""


class DataError(KDError, ValueError):
    """A data source or Dataset file that is missing, malformed or unsafe."""


class ArtifactError(KDError, ValueError):
    """A model or dataset artifact that is not what the stage expects."""


class DivergenceError(KDError, RuntimeError):
    """Training diverged (non-finite loss, or accuracy stuck at chance)."""
