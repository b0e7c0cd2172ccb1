"""Safe checkpoint loading for the zoo: release files, our own files and plain ViT/DeiT weights.

Files are read with ``torch.load(weights_only=True)``; the only non-tensor class the reference
releases pickle, ``argparse.Namespace``, is allow-listed (never plain pickle). A file that cannot be
read that way fails with one line of our own: corrupt or truncated, or refused because it holds
objects whose loading could run code (torch's advice to retry with ``weights_only=False`` is the
wrong advice for a file of unknown origin, so it is never repeated).

Other weights than the model's own (a plain ViT/DeiT, another resolution or class count, a release file
for the bottom-up twin, an MMSeg checkpoint) go through one adapter, ``fit_checkpoint`` (``load_pretrained``
for a file), whatever starts from them: ``--finetune``, the segmentation backbone, the vision-language
image encoder. Each caller only says, with its keywords and the tables below, what it may set aside,
what may be missing and how the position embedding is resampled; the report says what was done.
"""
import argparse
import logging
import math
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from errors import UserFacingError
from models.pos_embed import RESAMPLERS

_logger = logging.getLogger(__name__)

#: Classes a checkpoint may contain besides tensors and containers (the releases pickle their args).
SAFE_GLOBALS = [argparse.Namespace]
torch.serialization.add_safe_globals(SAFE_GLOBALS)

__all__ = ['SAFE_GLOBALS', 'load_checkpoint_file', 'select_state_dict', 'load_weights', 'CheckpointError',
           'CheckpointReport', 'fit_checkpoint', 'load_pretrained', 'adapt_state_dict', 'CLASSIFIER', 'TOP_DOWN',
           'TOP_DOWN_PREFIXES', 'MMSEG', 'RESHAPED_HEAD']


class CheckpointError(UserFacingError):
    """A checkpoint that cannot be used for the model at hand; the message says why and what to do."""


def load_checkpoint_file(path: str, map_location='cpu') -> dict:
    """Read a checkpoint file safely (tensors where ``map_location`` says, as for ``torch.load``; CPU by
    default); unreadable or unsafe files raise ``CheckpointError``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    # Re-asserted at every load: torch's safe_globals() context manager (which timm uses) removes the
    # classes it names on exit, even when they were allow-listed before.
    torch.serialization.add_safe_globals(SAFE_GLOBALS)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
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
                     '--finetune (models.checkpoint.fit_checkpoint), which resamples pos_embed and drops a mismatched '
                     'head.')
        raise CheckpointError('\n'.join(lines))


def load_weights(model: nn.Module, path: str, use_ema: bool = False) -> str:
    """Load a checkpoint strictly into ``model``; returns (and logs) which weights were loaded."""
    state_dict, which = select_state_dict(load_checkpoint_file(path), use_ema)
    check_compatible(model, state_dict, source=path)
    model.load_state_dict(state_dict, strict=True)
    msg = f"loaded '{which}' weights from {path}"
    _logger.info(msg)
    return msg


# ------------------------------------------------------------------------------------------------
# Other weights into a zoo backbone: one adapter for --finetune, the segmentation backbone and the
# vision-language image encoder, each saying with the tables below what it accepts.

#: Why keys a model lacks may be set aside, by key prefix (``fit_checkpoint``'s ``set_aside``): a
#: backbone without a classifier has no use for the checkpoint's.
CLASSIFIER: Mapping[str, str] = MappingProxyType({'head.': 'classifier', 'head_dist.': 'classifier',
                                                  'fc_norm.': 'classifier'})
#: The feedback path of a top-down model (the prompt, the decoders and, for AbS-RVT, the up-projections between
#: its stages): a bottom-up checkpoint lacks it (``may_miss``), the bottom-up twin has no use for a release's
#: (``set_aside``).
TOP_DOWN_PREFIXES = ('prompt', 'decoders.', 'up_projs.')
TOP_DOWN: Mapping[str, str] = MappingProxyType(
    {p: 'top-down weights, unused by the bottom-up twin' for p in TOP_DOWN_PREFIXES})
#: Where this project's MMSeg checkpoints keep the backbone, and what the rest of them is (``unwrap``).
MMSEG: Mapping[str, str] = MappingProxyType({'backbone.vit.': 'segmentation heads'})
#: Why a classifier of another shape (another class count) is dropped: the model keeps its initialisation.
RESHAPED_HEAD = 'classifier of another shape'
_NOTHING: Mapping[str, str] = MappingProxyType({})


@dataclass
class CheckpointReport:
    """What fitting a checkpoint did, never silently: which entry of which file was read, how many
    tensors were loaded, what was set aside (key -> why), what the checkpoint lacked (left as
    initialised) and how the position embedding was resampled (old grid, new grid)."""
    path: str = ''
    which: str = ''
    loaded: int = 0
    skipped: Dict[str, str] = field(default_factory=dict)
    missing: List[str] = field(default_factory=list)
    resampled: Optional[Tuple[Tuple[int, int], Tuple[int, int]]] = None
    resample: str = 'timm'

    def summary(self) -> str:
        """Lines for the log: what was loaded, then each kind of departure from a strict load."""
        lines = [f"loaded {self.loaded} tensors of '{self.which or 'state dict'}' from {self.path or 'memory'}"]
        if self.resampled:
            lines.append(f'  pos_embed resampled from grid {self.resampled[0]} to {self.resampled[1]} '
                         f'({self.resample} way)')
        reasons: Dict[str, List[str]] = {}
        for k, why in self.skipped.items():
            reasons.setdefault(why, []).append(k)
        for why, keys in reasons.items():
            lines.append(f"  skipped ({why}): {len(keys)} tensor{'s' if len(keys) > 1 else ''}, {_some(keys)}")
        if self.missing:
            lines.append(f'  not in the checkpoint (kept as initialised): {_some(self.missing)}')
        return '\n'.join(lines)


def _some(keys: Sequence[str], n: int = 6) -> str:
    return ', '.join(keys[:n]) + (' ...' if len(keys) > n else '')


def fit_checkpoint(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                   set_aside: Mapping[str, str] = _NOTHING, may_miss: Optional[Sequence[str]] = None,
                   resample: str = 'timm', unwrap: Mapping[str, str] = _NOTHING
                   ) -> Tuple[Dict[str, torch.Tensor], CheckpointReport]:
    """A release, project, DeiT/timm or MMSeg state dict made to fit ``model``; returns ``(sd, report)``.

    In this order: ``unwrap`` (prefix -> why) takes a backbone out of a wrapping model's checkpoint (the
    prefix stripped, the wrapper's other keys set aside with the reason); checkpoint keys the model lacks
    whose prefix is in ``set_aside`` (prefix -> why) are set aside; ``pos_embed`` is resampled to the
    model's grid, ``resample`` saying how (``models.pos_embed.RESAMPLERS``: ``'timm'`` antialiases,
    ``'release'`` does not); a classifier of another shape is dropped. Any other key or shape that does
    not fit is a ``CheckpointError``, and so are weights the checkpoint lacks unless ``may_miss`` is None
    or they start with one of its prefixes (or are ``norm.*`` when the checkpoint's final norm was its
    set-aside ``fc_norm``: global-average pooling).
    """
    if resample not in RESAMPLERS:
        raise ValueError(f'resample must be one of {tuple(RESAMPLERS)}, got {resample!r}')
    own = model.state_dict()
    sd, skipped = _unwrap(dict(state_dict), unwrap)
    skipped.update(_set_aside(own, sd, set_aside))
    report = CheckpointReport(skipped=skipped, resample=resample)
    report.resampled = _fit_pos_embed(model, own, sd, resample)
    skipped.update(_drop_reshaped_head(model, own, sd))
    _check_fits(model, own, sd)
    report.missing = [k for k in own if k not in sd]
    _check_lacking(report, may_miss)
    report.loaded = len(sd)
    return sd, report


def _unwrap(sd: Dict[str, torch.Tensor], unwrap: Mapping[str, str]) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """The backbone of a wrapping model's checkpoint (the first ``unwrap`` prefix it has), the rest set aside."""
    for prefix, why in unwrap.items():
        if any(k.startswith(prefix) for k in sd):
            return ({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)},
                    {k: why for k in sd if not k.startswith(prefix)})
    return sd, {}


def _set_aside(own: Mapping[str, torch.Tensor], sd: Dict[str, torch.Tensor],
               table: Mapping[str, str]) -> Dict[str, str]:
    """Remove from ``sd`` the keys the model lacks whose prefix ``table`` names; returns key -> why."""
    skipped = {}
    for k in [k for k in sd if k not in own]:
        why = next((why for prefix, why in table.items() if k.startswith(prefix)), None)
        if why is not None:
            skipped[k] = why
            del sd[k]
    return skipped


def _fit_pos_embed(model: nn.Module, own: Mapping[str, torch.Tensor], sd: Dict[str, torch.Tensor], how: str):
    """Resample a square checkpoint grid to the model's; returns (old grid, new grid), or None if it fits."""
    theirs, mine = sd.get('pos_embed'), own.get('pos_embed')
    if theirs is None or mine is None or theirs.shape == mine.shape:
        return None
    prefix = 0 if getattr(model, 'no_embed_class', False) else getattr(model, 'num_prefix_tokens', 1)
    n = theirs.shape[1] - prefix if theirs.dim() == 3 else 0
    side = math.isqrt(max(n, 0))
    if n <= 0 or side * side != n or theirs.shape[-1] != mine.shape[-1]:
        raise CheckpointError(f'pos_embed of shape {tuple(theirs.shape)} cannot be resampled to {tuple(mine.shape)}: '
                              'is it a checkpoint of another model or width?')
    new = tuple(int(s) for s in model.patch_embed.grid_size)
    sd['pos_embed'] = RESAMPLERS[how](theirs, new, (side, side), prefix)
    return (side, side), new


def _drop_reshaped_head(model: nn.Module, own: Mapping[str, torch.Tensor],
                        sd: Dict[str, torch.Tensor]) -> Dict[str, str]:
    """Remove the classifier's weights of another shape (another class count); returns key -> why."""
    head = model.get_classifier() if hasattr(model, 'get_classifier') else None
    ids = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    names = {name for name, p in model.named_parameters() if id(p) in ids}
    dropped = [k for k in sd if k in names and sd[k].shape != own[k].shape]
    for k in dropped:
        del sd[k]
    return {k: RESHAPED_HEAD for k in dropped}


def _check_fits(model: nn.Module, own: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor]) -> None:
    """Keys the model lacks, or of another shape, are an error: never dropped silently."""
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if unexpected or shapes:
        raise CheckpointError(f'weights do not fit {type(model).__name__}: unexpected keys {unexpected[:8]}, '
                              f'wrong shapes {[(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in shapes[:8]]}')


def _check_lacking(report: CheckpointReport, may_miss: Optional[Sequence[str]]) -> None:
    """Weights the checkpoint lacks must be ones it may lack (``fit_checkpoint``)."""
    if may_miss is None:
        return
    gap = any(k.startswith('fc_norm.') for k in report.skipped)  # its final norm was fc_norm: ours stays
    optional = tuple(may_miss) + (('norm.',) if gap else ())
    lacking = [k for k in report.missing if not k.startswith(optional)]
    if lacking:
        raise CheckpointError(f"the checkpoint lacks {len(lacking)} of the backbone's weights ("
                              + ', '.join(lacking[:6]) + '): is it of another model or depth?')


def load_pretrained(model: nn.Module, path: str, *, use_ema: bool = False, **how) -> CheckpointReport:
    """Start ``model`` from the checkpoint file ``path`` (read safely): ``fit_checkpoint(model, ..., **how)``
    then a non-strict load of what fits. Errors name the file; returns the report."""
    state_dict, which = select_state_dict(load_checkpoint_file(path), use_ema)
    try:
        sd, report = fit_checkpoint(model, state_dict, **how)
    except CheckpointError as e:
        raise CheckpointError(f'{path}: {e}') from None
    model.load_state_dict(sd, strict=False)
    report.path, report.which = path, which
    return report


def adapt_state_dict(model: nn.Module,
                     state_dict: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, list]]:
    """``fit_checkpoint`` with its defaults (timm's resampling, nothing set aside, anything may be missing),
    its report as the dict earlier callers read: ``missing``, ``dropped_head``, ``resampled``."""
    sd, report = fit_checkpoint(model, state_dict)
    return sd, {'missing': report.missing,
                'dropped_head': [k for k, why in report.skipped.items() if why == RESHAPED_HEAD],
                'resampled': ['pos_embed'] if report.resampled else []}
