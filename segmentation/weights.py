"""Classification checkpoints into a segmentation backbone, saying what was not used.

A segmentation run starts from a classification checkpoint: this project's ``main.py`` output or a
release file (both keep the weights under ``model``; read safely by ``models.load_checkpoint_file``).
What does not carry over is set aside and reported, never dropped silently: the classifier
(``head``, ``fc_norm``), the top-down parts when the backbone is the bottom-up ViT, and the
position embedding is resampled to the backbone's grid the release's way (bicubic, no antialias).
Anything else that does not fit (another model or size) is one ``CheckpointError``.
"""
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from models.checkpoint import CheckpointError, adapt_state_dict, load_checkpoint_file, select_state_dict
from segmentation.backbone import resample_pos_embed

__all__ = ['LoadReport', 'load_classification_weights', 'fit_state_dict']

CLASSIFIER_PREFIXES = ('head.', 'head_dist.', 'fc_norm.')
TOP_DOWN_PREFIXES = ('prompt', 'decoders.')
#: an mmseg checkpoint of this sub-project keeps the backbone's weights under this prefix
SEG_PREFIX = 'backbone.vit.'


@dataclass
class LoadReport:
    """What loading did: which entry was read, what was skipped (key -> why), what the checkpoint
    lacked (left as initialised) and how the position embedding was resampled."""
    path: str
    which: str
    loaded: int = 0
    skipped: Dict[str, str] = field(default_factory=dict)
    missing: List[str] = field(default_factory=list)
    resampled: Optional[Tuple[Tuple[int, int], Tuple[int, int]]] = None

    def summary(self) -> str:
        lines = [f"loaded {self.loaded} tensors of '{self.which}' from {self.path}"]
        if self.resampled:
            lines.append(f'  pos_embed resampled from grid {self.resampled[0]} to {self.resampled[1]}')
        reasons: Dict[str, List[str]] = {}
        for k, why in self.skipped.items():
            reasons.setdefault(why, []).append(k)
        for why, keys in reasons.items():
            lines.append(f'  skipped ({why}): {len(keys)} tensors, ' + ', '.join(keys[:6]) + (' ...' if len(keys) > 6 else ''))
        if self.missing:
            lines.append(f'  not in the checkpoint (kept as initialised): ' + ', '.join(self.missing[:6])
                         + (' ...' if len(self.missing) > 6 else ''))
        return '\n'.join(lines)


def _set_aside(own: Dict[str, torch.Tensor], sd: Dict[str, torch.Tensor]) -> Dict[str, str]:
    """Keys the backbone has no use for, with the reason; mmseg checkpoints give their backbone."""
    skipped = {}
    if any(k.startswith(SEG_PREFIX) for k in sd):
        for k in [k for k in sd if not k.startswith(SEG_PREFIX)]:
            skipped[k] = 'segmentation heads'
            del sd[k]
        for k in list(sd):
            sd[k[len(SEG_PREFIX):]] = sd.pop(k)
    for k in [k for k in sd if k not in own]:
        if k.startswith(CLASSIFIER_PREFIXES):
            skipped[k] = 'classifier'
        elif k.startswith(TOP_DOWN_PREFIXES):
            skipped[k] = 'top-down weights, unused by the bottom-up ViT'
        else:
            continue
        del sd[k]
    return skipped


def _fit_pos_embed(model: nn.Module, sd: Dict[str, torch.Tensor]):
    """Resample a square checkpoint grid to the backbone's; returns (old grid, new grid) or None."""
    own = model.pos_embed
    theirs = sd.get('pos_embed')
    if theirs is None or theirs.shape == own.shape:
        return None
    n = theirs.shape[1] - model.num_prefix_tokens
    side = math.isqrt(max(n, 0))
    if theirs.dim() != 3 or side * side != n or theirs.shape[-1] != own.shape[-1]:
        raise CheckpointError(f'pos_embed of shape {tuple(theirs.shape)} cannot be resampled to {tuple(own.shape)}: '
                              'is it a checkpoint of another model or width?')
    new = tuple(model.patch_embed.grid_size)
    sd['pos_embed'] = resample_pos_embed(theirs, new, (side, side), model.num_prefix_tokens)
    return (side, side), new


def fit_state_dict(model: nn.Module, state_dict: Dict[str, torch.Tensor]):
    """``state_dict`` made to fit ``model`` (a ``backbone.vit``); returns ``(sd, skipped, missing, resampled)``.
    Keys that belong to no known part, or of another shape, raise ``CheckpointError``."""
    sd = dict(state_dict)
    skipped = _set_aside(model.state_dict(), sd)
    resampled = _fit_pos_embed(model, sd)
    sd, report = adapt_state_dict(model, sd)
    # a global-average-pooling model has fc_norm instead of a final norm: the backbone's stays as initialised
    optional = TOP_DOWN_PREFIXES + (('norm.',) if any(k.startswith('fc_norm.') for k in skipped) else ())
    lacking = [k for k in report['missing'] if not k.startswith(optional)]
    if lacking:  # only the top-down parts may be absent (a plain ViT/DeiT checkpoint for AbSViT)
        raise CheckpointError(f'the checkpoint lacks {len(lacking)} of the backbone\'s weights ('
                              + ', '.join(lacking[:6]) + '): is it of another model or depth?')
    return sd, skipped, report['missing'], resampled


def load_classification_weights(model: nn.Module, path: str) -> LoadReport:
    """Load a classification (or this sub-project's segmentation) checkpoint into ``model``."""
    state_dict, which = select_state_dict(load_checkpoint_file(path))
    try:
        sd, skipped, missing, resampled = fit_state_dict(model, state_dict)
    except CheckpointError as e:
        raise CheckpointError(f'{path}: {e}') from None
    model.load_state_dict(sd, strict=False)
    return LoadReport(path, which, len(sd), skipped, missing, resampled)
