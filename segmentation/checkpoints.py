"""Segmentation checkpoints that never run code when read.

mmengine reads a checkpoint with ``torch.load(weights_only=True)`` and, when that fails, silently
tries again with a full unpickle, so a crafted ``.pth`` given to ``test.py`` or ``--resume-from`` could
run code. Two pieces close that:

* ``use_checkpoint_loaders(trusted)`` points every mmengine checkpoint scheme at the project's safe
  reader (``models.load_checkpoint_file``: tensors, plain values, containers). Remote schemes (URLs,
  ``open-mmlab://``...) are refused: their files are read by mmengine's own loaders. ``--trusted`` puts
  mmengine's loaders back, for a checkpoint the user vouches for (mmengine's or an older one of ours).
* ``WeightsOnlyStateHook`` makes the checkpoints ``train.py`` writes readable that way: the only
  non-plain objects mmengine puts in them are the message hub's ``HistoryBuffer``s and numpy values,
  which it stores as tensors and plain numbers on save and rebuilds on load, so resuming is unchanged.
"""
import os.path as osp
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmengine.runner import CheckpointLoader

from models.checkpoint import CheckpointError, load_checkpoint_file

__all__ = ['use_checkpoint_loaders', 'WeightsOnlyStateHook', 'RequireAllWeights', 'to_plain', 'from_plain',
           'TRUSTED_HINT']

#: how a HistoryBuffer is stored: a dict with this single key
_BUFFER_TAG = '__mmengine_history_buffer__'
TRUSTED_HINT = ('If it is a checkpoint you trust (one your own segmentation/train.py wrote with an earlier '
                'version, or an mmengine checkpoint from a source you trust), pass --trusted.')

#: mmengine's own loaders, kept the first time they are replaced so that --trusted can put them back
_MMENGINE_LOADERS: Optional[Dict[str, Callable]] = None


def load_from_safe_local(filename: str, map_location=None) -> dict:
    """mmengine's loader signature over the project's weights-only reader."""
    path = osp.expanduser(filename)
    if not osp.isfile(path):
        raise CheckpointError(f'checkpoint not found: {filename}')
    try:
        return load_checkpoint_file(path, map_location=map_location)
    except CheckpointError as e:
        raise CheckpointError(f'{e} {TRUSTED_HINT}') from None


def load_from_remote_refused(filename: str, map_location=None) -> dict:
    raise CheckpointError(f'refused to read checkpoint {filename}: remote checkpoints are read by mmengine, '
                          'which falls back to a full unpickle (loading such a file may run code). Download '
                          'it and pass the local file, or pass --trusted if you trust its source.')


def use_checkpoint_loaders(trusted: bool = False) -> None:
    """Route every checkpoint mmengine reads (``load_from``, resume, ``init_cfg`` Pretrained) through the
    safe reader, or, with ``trusted``, through mmengine's own loaders. Process-wide, idempotent."""
    global _MMENGINE_LOADERS
    if _MMENGINE_LOADERS is None:
        # a private table, read once: the public API can add loaders but not list them
        _MMENGINE_LOADERS = dict(CheckpointLoader._schemes)
    for prefix, loader in _MMENGINE_LOADERS.items():
        if not trusted:
            loader = load_from_safe_local if prefix == '' else load_from_remote_refused
        CheckpointLoader.register_scheme(prefix, loader, force=True)


def to_plain(obj: Any) -> Any:
    """``obj`` with HistoryBuffers and numpy values turned into tensors and plain numbers (a new object;
    the runner's own state is not touched)."""
    if isinstance(obj, HistoryBuffer):
        log, count = obj.data
        return {_BUFFER_TAG: {'log': torch.from_numpy(np.array(log)), 'count': torch.from_numpy(np.array(count)),
                              'max_length': int(obj.max_length)}}
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return type(obj)((k, to_plain(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    return obj


def from_plain(obj: Any) -> Any:
    """The inverse of ``to_plain`` for what mmengine reads back: tagged dicts become HistoryBuffers."""
    if isinstance(obj, dict):
        if set(obj) == {_BUFFER_TAG}:
            b = obj[_BUFFER_TAG]
            return HistoryBuffer(b['log'].numpy(), b['count'].numpy(), b['max_length'])
        return type(obj)((k, from_plain(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [from_plain(v) for v in obj]
    return obj


class WeightsOnlyStateHook(Hook):
    """Stores the message hub's state in weights-only-readable form, and rebuilds it when read back."""

    priority = 'VERY_LOW'  # on save: after every hook that adds to the checkpoint

    #: the entries that may hold mmengine or numpy objects (weights and optimizer state are tensors)
    entries = ('message_hub', 'meta')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        for key in self.entries:
            if key in checkpoint:
                checkpoint[key] = to_plain(checkpoint[key])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        for key in self.entries:
            if key in checkpoint:
                checkpoint[key] = from_plain(checkpoint[key])


class RequireAllWeights(Hook):
    """Evaluation only: refuse a checkpoint that leaves part of the segmentor as initialised. mmengine loads
    non-strictly, so a classification checkpoint given to test.py would load nothing and score a random
    model; this says so instead."""

    priority = 'VERY_LOW'

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        weights = checkpoint.get('state_dict', checkpoint)
        have = {k[len('module.'):] if k.startswith('module.') else k for k in weights}
        model = getattr(runner.model, 'module', runner.model)
        missing = [k for k in model.state_dict() if k not in have]
        if missing:
            raise CheckpointError(
                f'the checkpoint lacks {len(missing)} of the segmentor\'s {len(model.state_dict())} tensors ('
                + ', '.join(missing[:4]) + (' ...' if len(missing) > 4 else '') + '): it is not a checkpoint of '
                'this config\'s segmentor. A classification checkpoint starts training instead '
                '(train.py --backbone-checkpoint); test.py takes a checkpoint that train.py wrote for this config.')
