"""Classification checkpoints into a segmentation backbone: what the backbone accepts from one.

A segmentation run starts from a classification checkpoint: this project's ``main.py`` output or a
release file (both keep the weights under ``model``), a plain ViT/DeiT file, or this sub-project's own
segmentation checkpoint. The adapter is the zoo's (``models.checkpoint.fit_checkpoint``); this module
only says what a segmentation backbone takes, so that the segmentation and classification paths cannot
drift apart:

* set aside, and reported: the classifier (``head``, ``fc_norm``), the top-down parts when the backbone
  is the bottom-up ViT, and the heads of an MMSeg checkpoint (its backbone is under ``backbone.vit.``);
* possibly missing: the top-down parts only (a plain ViT/DeiT checkpoint for AbSViT);
* the position embedding resampled to the backbone's grid the release's way (bicubic, no antialias),
  as the backbone does at every forward.

Anything else that does not fit (another model or size) is one ``CheckpointError`` naming the file.
"""
from types import MappingProxyType
from typing import Any, Mapping

import torch.nn as nn

from models.checkpoint import CLASSIFIER, MMSEG, TOP_DOWN, TOP_DOWN_PREFIXES, CheckpointReport, load_pretrained

__all__ = ['SEGMENTATION_BACKBONE', 'LoadReport', 'load_classification_weights']

#: what a segmentation backbone accepts from a checkpoint: ``fit_checkpoint``'s keywords
SEGMENTATION_BACKBONE: Mapping[str, Any] = MappingProxyType(dict(
    set_aside=MappingProxyType({**CLASSIFIER, **TOP_DOWN}), may_miss=TOP_DOWN_PREFIXES, resample='release',
    unwrap=MMSEG))
#: the report of a load (kept under the name this module gave it first)
LoadReport = CheckpointReport


def load_classification_weights(model: nn.Module, path: str) -> CheckpointReport:
    """Load a classification (or this sub-project's segmentation) checkpoint into ``model``, a ``backbone.vit``."""
    return load_pretrained(model, path, **SEGMENTATION_BACKBONE)
