"""The image side: a zoo ViT / AbSViT whose top-down pass is steered by a text prior.

The two passes, the prior's mask, the feedback and the variational loss are the zoo model's own
(``models/topdown.py``: the encoder calls its steps ``steering`` -> ``bottom_up`` -> ``top_down_signals``
-> pass 2); this module adds only what the vision-language model needs around them: the projection of a
text vector to the image width (``prompt_decoder``, the release's name) and the prior modes, one row of
``PRIOR_MODES`` each, which say everything a mode decides (the model reads its text and loss fields):

* ``paper``: the text's first-token state steers every task; reweighting
  ``alpha * clamp(cos(p, z), 0, 1) * z`` with alpha 10; the CLIP-style prior loss and the variational
  loss in every task;
* ``release`` (what the release runs): the mean over all (padded) positions steers VQA, the
  end-of-sequence state retrieval; ``x = (z * mask) @ (p p^T) * 5`` with the unnormalised ``p``; no
  prior loss, the variational loss only in VQA.

A plain timm ViT (the paper's ViT-B baseline) is accepted too: it has no prior and no feedback.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import timm
import torch
import torch.nn as nn

import models  # noqa: F401  (registers the zoo with timm)
from models.checkpoint import CheckpointError, adapt_state_dict, load_checkpoint_file, select_state_dict
from models.topdown import variational_loss

__all__ = ['TASKS', 'PriorMode', 'PRIOR_MODES', 'resolve_prior_mode', 'ImageOutput', 'SteeredImageEncoder',
           'build_image_encoder', 'load_image_weights']

#: the tasks of the vision-language model
TASKS = ('vqa', 'retrieval')
#: a text vector: ``(hidden (B, L, D), attention_mask (B, L)) -> (B, D)``
TextVector = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def first_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The first token's state (``<s>`` / ``[CLS]``): the paper's prior for every task."""
    return hidden[:, 0]


def every_position(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean over every position, padding included: what the release averages for VQA."""
    return hidden.mean(dim=1)


def end_of_sequence(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The state at the end-of-sequence token (``</s>`` for RoBERTa, ``[SEP]`` for BERT): the release's
    retrieval prior."""
    last = attention_mask.long().sum(dim=1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class PriorMode(NamedTuple):
    """One row of ``PRIOR_MODES``: how the text steers the image encoder and what the training adds."""
    name: str
    reweighting: str                     #: ``models.topdown.REWEIGHTINGS``: how the prior reweights pass-1 tokens
    alpha: float                         #: the reweighting's scale unless ``VLConfig.alpha`` sets one
    text_vector: Dict[str, TextVector]   #: task -> the text vector that steers (before ``prompt_decoder``)
    prior_loss: bool                     #: the CLIP-style prior loss (in every task)
    var_loss_tasks: Tuple[str, ...]      #: the tasks whose loss has the variational loss


PRIOR_MODES: Dict[str, PriorMode] = {m.name: m for m in (
    PriorMode('paper', 'scale', 10.0, {'vqa': first_token, 'retrieval': first_token}, prior_loss=True,
              var_loss_tasks=TASKS),
    PriorMode('release', 'rank1', 5.0, {'vqa': every_position, 'retrieval': end_of_sequence}, prior_loss=False,
              var_loss_tasks=('vqa',)),
)}


def resolve_prior_mode(name: str) -> PriorMode:
    """The row of ``name``; the one error for an unknown mode."""
    if name not in PRIOR_MODES:
        raise ValueError(f'prior_mode must be one of {tuple(PRIOR_MODES)}, got {name!r}')
    return PRIOR_MODES[name]


@dataclass
class ImageOutput:
    """What the image side gives the fusion and the losses.

    ``tokens``: all tokens after the final norm of the reported pass (top-down for AbSViT);
    ``bottom_up``: pass-1 tokens (the CLIP-style prior loss aligns them with the prior);
    ``prior``: the projected text prior (B, C); ``mask``: the prior's token mask (B, N, 1);
    ``var_loss``: the unweighted variational loss (``None`` when not asked for or without feedback).
    """
    tokens: torch.Tensor
    bottom_up: Optional[torch.Tensor] = None
    prior: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None
    var_loss: Optional[torch.Tensor] = None


class SteeredImageEncoder(nn.Module):
    """A zoo ViT (``vit``) and, when it is top-down, the text-to-image prior projection."""

    def __init__(self, vit: nn.Module, text_dim: int, prior_mode: str = 'paper', alpha: Optional[float] = None):
        super().__init__()
        mode = resolve_prior_mode(prior_mode)
        self.vit = vit
        self.top_down = bool(getattr(vit, 'is_top_down', False))
        self.prior_mode = prior_mode
        self.width = vit.embed_dim
        self.alpha = mode.alpha if alpha is None else float(alpha)
        self.prompt_decoder = nn.Linear(text_dim, self.width) if self.top_down else None
        if self.top_down:
            if vit.td_mode != 'abs':
                raise ValueError(f"the vision-language image encoder needs td_mode 'abs', got {vit.td_mode!r}")
            vit.prompt = None  # the prior always comes from the text: no learned prompt to leave untrained
            vit.set_reweighting(mode.reweighting)

    def forward(self, images: torch.Tensor, text_prior: Optional[torch.Tensor] = None,
                var_loss: bool = False) -> ImageOutput:
        """``text_prior`` (B, text_dim) steers a top-down encoder (which needs it). The zoo model's own
        steps run; its ``forward_top_down`` is not called because it returns the head's output, while the
        fusion needs every token of pass 2 and the prior loss those of pass 1."""
        if not self.top_down:
            return ImageOutput(self.vit.forward_features(images))
        if text_prior is None:
            raise ValueError('a top-down image encoder needs a text prior (B, text_dim)')
        prior, alpha = self.vit.steering(self.prompt_decoder(text_prior), alpha=self.alpha)
        tokens1 = self.vit.bottom_up(images)
        signals, mask = self.vit.top_down_signals(tokens1, prior, alpha)
        tokens2, vloss = self._second_pass(images, signals, var_loss)
        return ImageOutput(tokens2, tokens1, prior, mask, vloss)

    def _second_pass(self, images: torch.Tensor, signals: List[torch.Tensor],
                     var_loss: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Pass 2's tokens and, with ``var_loss``, the variational loss: the tail of the mixin's
        ``forward_top_down``, which has no step of its own that returns tokens (the collecting pass
        costs more, so it runs only when the loss is asked for)."""
        if not var_loss:
            return self.vit.top_down(images, signals), None
        tokens, ins, outs = self.vit.forward_pass(images, signals, collect=True)
        return tokens, variational_loss(self.vit.decoders, ins, outs)

    def load_release_state_dict(self, state_dict: Dict[str, torch.Tensor]) -> None:
        """Load the release's image-encoder keys (timm ViT keys + ``decoders.*`` + ``prompt_decoder.*``)
        strictly; a mismatch lists every key."""
        ours = {('' if k.startswith('prompt_decoder.') else 'vit.') + k: v for k, v in state_dict.items()}
        missing, unexpected = self.load_state_dict(ours, strict=False)
        if missing or unexpected:
            raise KeyError(f'release image-encoder weights do not fit: missing {missing}, unexpected {unexpected}')


def build_image_encoder(name: str, text_dim: int, prior_mode: str = 'paper', alpha: Optional[float] = None,
                        **vit_kwargs) -> SteeredImageEncoder:
    """``timm.create_model(name)`` of the zoo without a classifier, class-token pooling (METER pools
    the first image token), wrapped with the prior projection. ``vit_kwargs`` override the zoo's
    config (tests build micro models this way)."""
    vit_kwargs = {'num_classes': 0, 'global_pool': 'token', 'class_token': True, **vit_kwargs}
    vit = timm.create_model(name, **vit_kwargs)
    return SteeredImageEncoder(vit, text_dim, prior_mode, alpha)


#: what an image-classification checkpoint has that the vision-language image encoder does not use
_UNUSED_PREFIXES = ('head.', 'head_dist.', 'fc_norm.', 'prompt')


def load_image_weights(vit: nn.Module, path: str) -> str:
    """Start the image encoder from an ImageNet checkpoint of this project or of the release (read with
    ``weights_only=True``): the classifier and the learned ``prompt`` are set aside (the text is the
    prior here), the position embedding is resampled to the encoder's grid, and weights the checkpoint
    lacks may only be the feedback's (a plain ViT/DeiT file for AbSViT). Returns what was done."""
    state_dict, which = select_state_dict(load_checkpoint_file(path))
    own = vit.state_dict()
    unused = [k for k in state_dict if k not in own and k.startswith(_UNUSED_PREFIXES)]
    sd, report = adapt_state_dict(vit, {k: v for k, v in state_dict.items() if k not in unused})
    lacking = [k for k in report['missing'] if not k.startswith('decoders.')]
    if lacking:
        raise CheckpointError(f"{path} lacks {len(lacking)} image-encoder weights ({', '.join(lacking[:6])}): "
                              'is it a checkpoint of another model or width?')
    vit.load_state_dict(sd, strict=False)
    return (f"loaded '{which}' weights from {path}: set aside {unused or 'nothing'}, "
            f"resampled {report['resampled'] or 'nothing'}, kept as initialised {report['missing'] or 'nothing'}")
