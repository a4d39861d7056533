"""The exceptions fastadam defines (re-exported where users meet them: ``fastadam``,
:mod:`fastadam._backends`), kept at the bottom of the layers so that a kernel module can
raise one without importing the backend registry above it."""


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here; the message says why."""
