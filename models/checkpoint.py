"""Safe checkpoint loading for the zoo: release files, our own files and plain ViT/DeiT weights.

Files are read with ``torch.load(weights_only=True)``; the only non-tensor class the reference
releases pickle, ``argparse.Namespace``, is allow-listed (never plain pickle). A file that cannot be
read that way fails with one line of our own: corrupt or truncated, or refused because it holds
objects whose loading could run code (torch's advice to retry with ``weights_only=False`` is the
wrong advice for a file of unknown origin, so it is never repeated).
"""
import argparse
import logging
import os
import pickle
import zipfile
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed

from errors import UserFacingError

_logger = logging.getLogger(__name__)

#: Classes a checkpoint may contain besides tensors and containers (the releases pickle their args).
SAFE_GLOBALS = [argparse.Namespace]
torch.serialization.add_safe_globals(SAFE_GLOBALS)

__all__ = ['SAFE_GLOBALS', 'load_checkpoint_file', 'select_state_dict', 'load_weights', 'adapt_state_dict',
           'CheckpointError']


class CheckpointError(UserFacingError):
    """A checkpoint that cannot be used for the model at hand; the message says why and what to do."""


def load_checkpoint_file(path: str) -> dict:
    """Read a checkpoint file safely (CPU tensors); unreadable or unsafe files raise ``CheckpointError``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    # Re-asserted at every load: torch's safe_globals() context manager (which timm uses) removes the
    # classes it names on exit, even when they were allow-listed before.
    torch.serialization.add_safe_globals(SAFE_GLOBALS)
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure becomes one message of ours
        raise CheckpointError(_unreadable_message(path, e)) from None


def _unsafe_globals(path: str) -> List[str]:
    """The non-allow-listed classes/functions the file's pickle names (empty when it cannot tell)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - not a readable torch.save archive
        return []


def _is_pickle_or_archive(path: str) -> bool:
    """A torch.save zip archive, or a pickle stream (PROTO opcode 0x80, protocol 2-5) such as torch's
    legacy format: what a well-formed but unsafe file looks like, unlike random or cut-off bytes."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, 'rb') as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _refusal(path: str, error: Exception) -> Optional[str]:
    """Why ``torch.load(weights_only=True)`` refused the file's content, or None when it simply could not
    read it."""
    text = str(error)
    if not (isinstance(error, pickle.UnpicklingError) and 'Weights only load failed' in text):
        return None
    names = _unsafe_globals(path)
    if names:
        return f'it names {", ".join(names[:5])}, which {"is" if len(names) == 1 else "are"} not allow-listed'
    if 'Unsupported' in text and _is_pickle_or_archive(path):
        return 'it holds pickled content other than tensors and plain values'
    return None


def _unreadable_message(path: str, error: Exception) -> str:
    """One line for a file ``torch.load(weights_only=True)`` rejected: refused (may run code) or corrupt."""
    refusal = _refusal(path, error)
    if refusal:
        return (f'refused to load checkpoint {path}: {refusal}, and loading such a file may run code. '
                'Only tensors, numbers, strings, containers and argparse.Namespace are accepted '
                '(torch.load with weights_only=True); save the weights (state dicts) alone from a source you '
                'trust and load that file.')
    text = str(error).strip()
    first = text.splitlines()[0].split('. ')[0].rstrip('.') if text else ''
    reason = f'{type(error).__name__}: {first}' if first and 'weights_only' not in first else type(error).__name__
    return (f'cannot read checkpoint {path} ({os.path.getsize(path)} bytes): the file is corrupt or truncated '
            f'({reason}). Copy it again, or use another checkpoint.')


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
