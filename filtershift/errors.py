"""Errors that reach the user: each names the problem and the remedy."""


class FiltershiftError(Exception):
    """Base class: a problem the user can fix; the CLI prints it without a traceback."""

    exit_code = 2


class InputError(FiltershiftError):
    """A source file (dataset.h5, a model, a config) is missing, malformed or unsafe."""


class StoreError(FiltershiftError):
    """A store is missing, incomplete, corrupted or of an unknown schema."""


class IncompleteStoreError(StoreError):
    """A writer was interrupted; the store refuses to open until the writer is resumed."""

    exit_code = 3


def reason(exc: BaseException) -> str:
    """A wrapped library error in its own words, first line only and without its class name, for messages."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else "the library gave no detail"
