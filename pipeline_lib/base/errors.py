"""Errors a user can cause, each carrying one sentence that names the file or key at fault."""


class SoundopsError(Exception):
    """A problem with the user's input (params, files, paths), reported without a traceback.

    The command line prints ``str(error)`` and exits non-zero; the message must name the
    file or key involved and say what was expected.
    """


class ParamsError(SoundopsError):
    """params.yaml is missing, unreadable, or a key has a wrong value."""


class AudioError(SoundopsError):
    """An audio file cannot be decoded or holds no usable signal."""


class PathEscapeError(SoundopsError):
    """A path from a manifest or parameter resolves outside the root it must stay in."""


class GateError(SoundopsError):
    """A blocking data or model gate failed; the message names each failed check."""
