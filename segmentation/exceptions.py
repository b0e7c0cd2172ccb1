"""Errors of the segmentation sub-project: each message says what is wrong and what to do.

They subclass the project's ``errors.UserFacingError`` so that ``segmentation/train.py`` and
``segmentation/test.py`` print them as one line, without a traceback.
"""
from errors import UserFacingError

__all__ = ['SegmentationError', 'BackboneInputError', 'DatasetLayoutError', 'LabelRangeError']


class SegmentationError(UserFacingError):
    """Base of the sub-project's errors."""


class BackboneInputError(SegmentationError):
    """An input or a setting the backbone cannot take (wrong rank, channels, prior shape...)."""


class DatasetLayoutError(SegmentationError):
    """A dataset folder that is not in the layout its config expects."""


class LabelRangeError(SegmentationError):
    """A label map holding ids the dataset does not define."""
