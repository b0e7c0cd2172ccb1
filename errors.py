"""Errors the user can act on: their message alone says what is wrong and what to do.

Command-line entry points (``main.py``, the demos) catch ``UserFacingError`` and print its message,
without a traceback. Every package raises its own subclass (``datasets.DatasetError``,
``models.CheckpointError``, ``robustness.folders.LayoutError``, ...), so this module imports nothing:
any package can depend on it without pulling in the training pipeline.
"""

__all__ = ['UserFacingError', 'UserError', 'NonFiniteLossError']


class UserFacingError(RuntimeError):
    """Base of every error whose message is meant for the user (one line: what, where, what to do)."""


class UserError(UserFacingError):
    """A problem with the command line, a config file or a setting."""


class NonFiniteLossError(UserFacingError):
    """The training loss became NaN or inf."""
