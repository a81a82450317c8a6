"""The base of glioseg's own errors whose message is written for the user.

The CLI prints such an error (and any ``ValueError``/``OSError``) as one line and exits
non-zero; ``--debug`` shows the traceback.
"""


class GliosegError(Exception):
    """An error with a message meant for the user, not a bug."""
