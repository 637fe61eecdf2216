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

from .checkpoints.download import DownloadError

# pickle.UnpicklingError covers UnsafeCheckpointError; SyntaxError a config
# that is not Python; ValueError also the config checks' ConfigError
USER_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError,
               FileExistsError, IsADirectoryError, NotADirectoryError,
               PermissionError,
               DownloadError, pickle.UnpicklingError, SyntaxError,
               UnicodeDecodeError)

EXIT_BAD_INPUT = 2


def error_line(err: BaseException) -> str:
    """``error: <message>`` on one line (KeyError's quotes dropped)."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else err
    if isinstance(err, SyntaxError) and err.filename:
        text = (f'{err.filename}, line {err.lineno}: {err.msg}: the file is '
                'not valid Python')
    return 'error: ' + ' '.join(str(text).split())


@contextmanager
def user_errors():
    """Exit with one ``error:`` line (status 2) on bad input."""
    try:
        yield
    except USER_ERRORS as err:
        print(error_line(err), file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


@contextmanager
def checkpoint_errors():
    """While a run is under way, only the checkpoint errors of ours (an
    unsafe or unreadable file met mid-run, a failed download) become one
    line: anything else keeps its traceback for debugging."""
    try:
        yield
    except (pickle.UnpicklingError, DownloadError) as err:
        print(error_line(err), file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
