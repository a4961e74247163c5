"""User-facing errors.

Anything the user can fix (a missing file, a bad config key, an unknown name) raises
:class:`TextVAEError`. The CLI prints its message as one line and exits with status 2;
a traceback means a bug in textvae, not in the input.
"""


class TextVAEError(Exception):
    """An error in the user's input, reported as one line without a traceback."""
