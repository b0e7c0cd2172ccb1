"""Dataset errors: one message saying what was expected and how to get it."""
from errors import UserFacingError


class DatasetError(UserFacingError):
    """A missing, malformed or unreadable dataset."""


class UnreadableImageError(DatasetError):
    """An image file that cannot be decoded; the message names the file.

    Takes a single message argument so that PyTorch's DataLoader can re-raise it, with its type,
    in the main process when a worker hits it.
    """
