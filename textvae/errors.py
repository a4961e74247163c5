"""User-facing errors.

Anything the user can fix (a missing file, a bad config key, an unknown name, a bad command-line
option) raises :class:`TextVAEError`. The CLI prints its message as one line and exits with status 2;
a traceback means a bug in textvae, not in the input.
"""
import argparse
import contextlib
from typing import Iterator, Optional


class TextVAEError(Exception):
    """An error in the user's input, reported as one line without a traceback. ``setting``: the dotted name of
    the setting it is about, where there is one (``data.batch_size``), so that ``train`` can say which recipe
    or argument set it."""

    def __init__(self, message: str, setting: Optional[str] = None) -> None:
        super().__init__(message)
        self.setting = setting


@contextlib.contextmanager
def about(setting: str) -> Iterator[None]:
    """Errors the block raises are about ``setting`` (where they do not name a narrower one)."""
    try:
        yield
    except TextVAEError as e:
        e.setting = e.setting or setting
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
