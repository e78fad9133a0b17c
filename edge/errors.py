"""Exceptions a line engineer reads. Each message says what, where, what was expected and what was found.

Every class carries the process exit code the CLI uses for it: 2 for anything the operator must fix before the
daemon can start (config, bundle, usage), 1 for failures at run time, 70 for a lost GPU.
"""


class InspectdError(Exception):
    """Base of every inspectd error; the CLI prints the message (no traceback) and exits with `exit_code`."""

    exit_code = 1


class ConfigError(InspectdError):
    """Raised when the config file or an INSPECTD_* override is missing, malformed or out of range."""

    exit_code = 2


class BundleError(InspectdError):
    """Raised when a model bundle is missing files, fails its hash check, or has a schema or input spec we can't run."""

    exit_code = 2


class DatasetError(InspectdError):
    """Raised when a dataset folder is empty, an image cannot be read, or a mask does not match its image."""

    exit_code = 2


class CameraConfigError(ConfigError):
    """Raised when a camera does not have a configured feature, or refuses its value (message: the allowed range)."""


class SourceError(InspectdError):
    """Raised when a frame source cannot be opened or stops delivering frames."""


class BackendError(InspectdError):
    """Raised when an inference backend cannot be loaded or an inference fails."""


class MissingExtraError(InspectdError):
    """Raised when a command needs an optional dependency group (train, gpu) that is not installed."""

    exit_code = 2


class DeviceLostError(BackendError):
    """Raised when the GPU context is lost (a sticky CUDA error) and no later CUDA call can succeed.

    The daemon gives every admitted frame an `error` verdict and exits with this code (documented in the README and
    systemd/inspectd.service, which restarts on it): a new process is the only way to a working CUDA context.
    """

    exit_code = 70


class VerdictLostError(InspectdError):
    """Raised when a verdict can be neither spooled nor delivered (disk full and broker down, or no acknowledgement).

    The pipeline stops admitting frames and the daemon exits non-zero: a lost verdict must never look like a clean run.
    """


class BrokerError(InspectdError):
    """Raised when a local Mosquitto (for `inspectd demo` / `inspectd bench`) cannot be found or started."""
