"""Errors the user can act on: their message alone says what is wrong and what to do.

Every command-line entry point runs through ``run_cli``, which prints a ``UserFacingError`` as one
line on stderr, without a traceback, and exits with ``USER_ERROR_EXIT``. Every package raises its own
subclass (``datasets.DatasetError``, ``models.CheckpointError``, ``robustness.folders.LayoutError``,
...), so this module imports only the standard library: any package can depend on it without pulling
in the training pipeline.
"""
import os
import sys
from typing import Callable, Optional, Sequence

__all__ = ['UserFacingError', 'UserError', 'NonFiniteLossError', 'USER_ERROR_EXIT', 'one_line', 'run_cli']


class UserFacingError(RuntimeError):
    """Base of every error whose message is meant for the user (one line: what, where, what to do)."""


class UserError(UserFacingError):
    """A problem with the command line, a config file or a setting."""


class NonFiniteLossError(UserFacingError):
    """The training loss became NaN or inf."""


#: the exit status of every entry point for an error the user can act on (argparse's own, too)
USER_ERROR_EXIT = 2


def one_line(error: BaseException) -> str:
    """The user's message of ``error``. An error raised in a DataLoader worker arrives wrapped in the
    worker's traceback text: its last line (the original message) is what the user needs."""
    msg = str(error)
    if 'Original Traceback' in msg:
        last = [line for line in msg.strip().splitlines() if line.strip()][-1]
        head, _, tail = last.partition(': ')
        msg = tail if tail and 'Error' in head else last
    return msg


def run_cli(entry: Callable[[Optional[Sequence[str]]], object], argv: Optional[Sequence[str]] = None, *,
            cleanup: Optional[Callable[[], None]] = None) -> int:
    """Run a command-line entry point the same way everywhere: a ``UserFacingError`` becomes one line
    on stderr (tagged with the rank under torchrun) and exit status ``USER_ERROR_EXIT``, with no
    traceback; an integer the entry returns is its exit status; ``cleanup`` runs in every case."""
    try:
        status = entry(argv)
        return status if isinstance(status, int) else 0
    except UserFacingError as e:
        rank = os.environ.get('RANK', '0')
        print(f'error{f" (rank {rank})" if rank != "0" else ""}: {one_line(e)}', file=sys.stderr, flush=True)
        return USER_ERROR_EXIT
    finally:
        if cleanup is not None:
            cleanup()
