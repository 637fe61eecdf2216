"""The errors bad input raises, and the one-line ``error: ...`` exit the
tools give for them.

Every error that bad input can cause (a wrong config value, a missing or
unsafe file, a URL that cannot be fetched) is raised as one of
:data:`USER_ERRORS` with a message that says what was wrong and what would
be right; :func:`user_errors` turns it into a single line and exit code 2,
the convention of argparse and of most command-line tools for bad usage.
This module imports nothing of the package: every other module may raise
these.
"""
import pickle
import sys
from contextlib import contextmanager


class ConfigError(ValueError):
    """A config that cannot work, found before any long work starts."""


class CheckpointFileError(ValueError):
    """A file that cannot be read as a checkpoint (the base of the reader's
    refusals but :class:`UnsafeCheckpointError`)."""


class CheckpointTooCostlyError(CheckpointFileError):
    """A checkpoint whose loading would cost unbounded time or memory."""


class MalformedPickleError(CheckpointFileError):
    """Bytes that are not a well-formed pickle or torch file."""


class TruncatedError(MalformedPickleError):
    """A file that ends before what it announces (an interrupted save)."""


class UnsupportedSchemeError(CheckpointFileError):
    """A checkpoint name whose scheme convnext_mm cannot read safely."""


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint asked to build something outside the vocabulary."""


class DownloadError(OSError):
    """A checkpoint URL could not be fetched (or did not verify)."""


class WorkDirInUse(FileExistsError):
    """Another run holds the work dir (:mod:`convnext_mm.launch.lock`)."""


class NoSpaceError(OSError):
    """A file could not be written whole for want of space; nothing of it
    was left on disk."""


# pickle.UnpicklingError covers UnsafeCheckpointError; ValueError also
# ConfigError and CheckpointFileError
USER_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError,
               FileExistsError, IsADirectoryError, NotADirectoryError,
               PermissionError, ModuleNotFoundError, DownloadError,
               pickle.UnpicklingError, NoSpaceError)
# what may still be met mid-run: an unsafe, unreadable or truncated file, a
# failed download, a checkpoint that could not be saved for want of space
CHECKPOINT_ERRORS = (pickle.UnpicklingError, DownloadError,
                     CheckpointFileError, NoSpaceError)
EXIT_BAD_INPUT = 2


def error_line(err: BaseException) -> str:
    """``error: <message>`` on one line (KeyError's quotes dropped)."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else err
    return 'error: ' + ' '.join(str(text).split())


@contextmanager
def _one_line_for(errors):
    try:
        yield
    except errors as err:
        print(error_line(err), file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def user_errors():
    """Exit with one ``error:`` line (status 2) on bad input."""
    return _one_line_for(USER_ERRORS)


def checkpoint_errors():
    """While a run is under way only :data:`CHECKPOINT_ERRORS` become one
    line: anything else keeps its traceback for debugging."""
    return _one_line_for(CHECKPOINT_ERRORS)
