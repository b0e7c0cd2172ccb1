"""Safe checkpoint loading for the zoo: release files, our own files and plain ViT/DeiT weights.

Files are read with ``torch.load(weights_only=True)``; the only non-tensor class the reference
releases pickle, ``argparse.Namespace``, is allow-listed (never plain pickle).
"""
import argparse
import logging
import os
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed

_logger = logging.getLogger(__name__)

#: Classes a checkpoint may contain besides tensors and containers (the releases pickle their args).
SAFE_GLOBALS = [argparse.Namespace]
torch.serialization.add_safe_globals(SAFE_GLOBALS)

__all__ = ['SAFE_GLOBALS', 'load_checkpoint_file', 'select_state_dict', 'load_weights', 'adapt_state_dict',
           'CheckpointError']


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used for the model at hand; the message says why and what to do."""


def load_checkpoint_file(path: str) -> dict:
    """Read a checkpoint file safely (CPU tensors)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    # Re-asserted at every load: torch's safe_globals() context manager (which timm uses) removes the
    # classes it names on exit, even when they were allow-listed before.
    torch.serialization.add_safe_globals(SAFE_GLOBALS)
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # pickle errors name the offending global; keep that
        raise CheckpointError(f'cannot read checkpoint {path} with weights_only=True: {e}') from e


def select_state_dict(checkpoint: dict, use_ema: bool = False) -> Tuple[Dict[str, torch.Tensor], str]:
    """Pick the weights to use from a checkpoint dict; returns ``(state_dict, which)``.

    The release evaluates ``model``; EMA weights (``model_ema`` / ``state_dict_ema``) only when asked.
    """
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'expected a dict checkpoint, got {type(checkpoint).__name__}')
    if use_ema:
        for key in ('model_ema', 'state_dict_ema'):
            if isinstance(checkpoint.get(key), dict):
                return _strip_prefix(checkpoint[key]), key
        raise CheckpointError('EMA weights were asked for but the checkpoint has neither model_ema nor '
                              f'state_dict_ema (keys: {sorted(checkpoint)[:10]})')
    for key in ('model', 'state_dict'):
        if isinstance(checkpoint.get(key), dict):
            return _strip_prefix(checkpoint[key]), key
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return _strip_prefix(checkpoint), 'state_dict (bare)'
    raise CheckpointError(f"no weights found: expected a 'model' or 'state_dict' entry, got {sorted(checkpoint)[:10]}")


def _strip_prefix(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Remove DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes."""
    out = {}
    for k, v in sd.items():
        for prefix in ('module.', '_orig_mod.'):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def check_compatible(model: nn.Module, state_dict: Dict[str, torch.Tensor], source: str = 'checkpoint') -> None:
    """Raise one error listing every missing, unexpected or mis-shaped key."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f'{k}: {tuple(state_dict[k].shape)} in {source}, {tuple(own[k].shape)} in model'
              for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        lines = [f'{source} does not match {type(model).__name__}:']
        if shapes:
            lines.append('  wrong shape: ' + '; '.join(shapes[:8]) + (' ...' if len(shapes) > 8 else ''))
        if missing:
            lines.append(f'  missing ({len(missing)}): ' + ', '.join(missing[:8]) + (' ...' if len(missing) > 8 else ''))
        if unexpected:
            lines.append(f'  unexpected ({len(unexpected)}): ' + ', '.join(unexpected[:8])
                         + (' ...' if len(unexpected) > 8 else ''))
        lines.append('  Is it a checkpoint of another model or size? To initialise from other weights use '
                     '--finetune (models.adapt_state_dict), which resamples pos_embed and drops a mismatched head.')
        raise CheckpointError('\n'.join(lines))


def load_weights(model: nn.Module, path: str, use_ema: bool = False) -> str:
    """Load a checkpoint strictly into ``model``; returns (and logs) which weights were loaded."""
    state_dict, which = select_state_dict(load_checkpoint_file(path), use_ema)
    check_compatible(model, state_dict, source=path)
    model.load_state_dict(state_dict, strict=True)
    msg = f"loaded '{which}' weights from {path}"
    _logger.info(msg)
    return msg


def adapt_state_dict(model: nn.Module, state_dict: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, list]]:
    """Fit other weights (plain ViT/DeiT, another resolution or class count) to ``model``.

    * ``pos_embed`` is resampled to the model's grid (timm's ``resample_abs_pos_embed``);
    * a classifier head of another shape is dropped (re-initialised by the model);
    * keys the model lacks are an error, never silently dropped; keys the checkpoint lacks
      (``prompt``, ``decoders.*`` for ViT weights) are reported.
    Returns ``(state_dict, report)`` with ``missing``, ``dropped_head``, ``resampled``.
    """
    own = model.state_dict()
    sd = dict(state_dict)
    report = {'missing': [], 'dropped_head': [], 'resampled': []}
    if 'pos_embed' in sd and 'pos_embed' in own and sd['pos_embed'].shape != own['pos_embed'].shape:
        prefix = 0 if getattr(model, 'no_embed_class', False) else getattr(model, 'num_prefix_tokens', 1)
        grid = model.patch_embed.grid_size
        sd['pos_embed'] = resample_abs_pos_embed(sd['pos_embed'], new_size=list(grid), num_prefix_tokens=prefix)
        report['resampled'].append('pos_embed')
    head = model.get_classifier() if hasattr(model, 'get_classifier') else None
    head_keys = [n for n, _ in model.named_parameters() if head is not None
                 and any(p is _ for p in head.parameters())] if head is not None else []
    for k in list(sd):
        if k in own and sd[k].shape != own[k].shape and k in head_keys:
            del sd[k]
            report['dropped_head'].append(k)
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if unexpected or shapes:
        raise CheckpointError(f'weights do not fit {type(model).__name__}: unexpected keys {unexpected[:8]}, '
                              f'wrong shapes {[(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in shapes[:8]]}')
    report['missing'] = [k for k in own if k not in sd]
    return sd, report
