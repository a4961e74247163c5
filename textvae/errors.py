"""User-facing errors.

Anything the user can fix (a missing file, a bad config key, an unknown name, a bad command-line
option) raises :class:`TextVAEError`. The CLI prints its message as one line and exits with status 2;
a traceback means a bug in textvae, not in the input.
"""
import argparse
import contextlib
from typing import Iterator


class TextVAEError(Exception):
    """An error in the user's input, reported as one line without a traceback. ``settings``: the dotted names of
    the settings it may be about (``data.batch_size``), so that ``train`` can say which recipe or argument set
    the value."""

    def __init__(self, message: str, *settings: str) -> None:
        super().__init__(message)
        self.settings = settings


@contextlib.contextmanager
def about(*settings: str) -> Iterator[None]:
    """Errors the block raises are about one of ``settings`` (where they do not name their own)."""
    try:
        yield
    except TextVAEError as e:
        e.settings = e.settings or settings
        raise


class CommandParser(argparse.ArgumentParser):
    """The parser of a ``textvae`` command: a bad option is a :class:`TextVAEError` (one line, naming
    the command and where its options are listed), not argparse's usage block. A description taken from a
    docstring is shown without its reStructuredText quotes."""

    def __init__(self, *args, **kwargs) -> None:
        if kwargs.get("description"):
            kwargs["description"] = kwargs["description"].replace("``", "")
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise TextVAEError(f"{self.prog}: {message} (see {self.prog} --help)")
