"""User-facing errors.

Anything the user can fix (a bad path, a malformed scene, a missing weight file) raises
:class:`OVS3DError` with a one-line message that says what is wrong and how to fix it. The CLI prints
that line and exits non-zero without a traceback; programming errors keep their tracebacks.
"""


class OVS3DError(Exception):
    """An error caused by user input; its message is one actionable line."""


class SceneError(OVS3DError):
    """The scene folder does not follow the expected layout (SPEC §1)."""


class BackendError(OVS3DError):
    """A foundation-model backend cannot be built (unknown name, missing weights or package)."""
