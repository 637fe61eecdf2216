"""The one-line ``error: ...`` exit the tools give for bad input.

Every error that bad input can cause (a wrong config value, a missing or
unsafe file, a URL that cannot be fetched) is raised as one of
:data:`USER_ERRORS` with a message that says what was wrong and what would
be right; :func:`user_errors` turns it into a single line and exit code 2,
the convention of argparse and of most command-line tools for bad usage.
"""
import pickle
import sys
from contextlib import contextmanager

from .checkpoints import CheckpointFileError, DownloadError, NoSpaceError

# pickle.UnpicklingError covers UnsafeCheckpointError; ValueError also the
# config checks' ConfigError (an unreadable config file among them)
USER_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError,
               FileExistsError, IsADirectoryError, NotADirectoryError,
               PermissionError, ModuleNotFoundError, DownloadError,
               pickle.UnpicklingError, NoSpaceError)

EXIT_BAD_INPUT = 2


class ConfigError(ValueError):
    """A config that cannot work, found before any long work starts."""


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
    """While a run is under way, only the checkpoint errors of ours (an
    unsafe, unreadable or truncated file met mid-run, a failed download, a
    checkpoint that could not be saved for want of space) become one line:
    anything else keeps its traceback for debugging."""
    return _one_line_for((pickle.UnpicklingError, DownloadError,
                          CheckpointFileError, NoSpaceError))
