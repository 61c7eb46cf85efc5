"""The errors of :mod:`sync.ls_client`: one line each, naming the server, never the token."""


class LabelStudioError(RuntimeError):
    """Any failure talking to Label Studio; ``str()`` is one line without secrets."""


class LabelStudioUnreachable(LabelStudioError):
    pass


class LabelStudioAuthError(LabelStudioError):
    pass
