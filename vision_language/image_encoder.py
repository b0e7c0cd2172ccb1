"""The image side: a top-down zoo backbone (AbSViT, AbS-RVT, AbS-FAN, ...) whose top-down pass is steered
by a text prior, or its bottom-up twin.

The two passes, the prior's mask, the feedback and the variational loss are the zoo model's own
(``models/topdown.py``: the encoder calls its steps ``steering`` -> ``bottom_up`` -> ``top_down_signals``
-> ``second_pass``); this module adds only what the vision-language model needs around them: the
projection of a text vector to the image width (``prompt_decoder``, the release's name), the tokens as
one sequence (a backbone whose tokens are a channel-last map gives them row by row) and the prior
modes, one row of ``PRIOR_MODES`` each, which say everything a mode decides (the model reads its text
and loss fields):

* ``paper``: the text's first-token state steers every task; reweighting
  ``alpha * clamp(cos(p, z), 0, 1) * z`` with alpha 10; the CLIP-style prior loss and the variational
  loss in every task;
* ``release`` (what the release runs): the mean over all (padded) positions steers VQA, the
  end-of-sequence state retrieval; ``x = (z * mask) @ (p p^T) * 5`` with the unnormalised ``p``; no
  prior loss, the variational loss only in VQA.

A bottom-up model (timm's ViT-B, the paper's baseline, or any twin) is accepted too: it has no prior and
no feedback. What a backbone is, and how it is built, is read from the model (``is_top_down``, its
constructor's options), never from its name.
"""
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple

import timm
import torch
import torch.nn as nn

import models  # noqa: F401  (registers the zoo with timm)
from models.checkpoint import CLASSIFIER, load_pretrained

__all__ = ['TASKS', 'PriorMode', 'PRIOR_MODES', 'resolve_prior_mode', 'ImageOutput', 'SteeredImageEncoder',
           'build_image_encoder', 'FIRST_TOKEN', 'IMAGE_ENCODER', 'load_image_weights', 'as_sequence']

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


def as_sequence(tokens: torch.Tensor) -> torch.Tensor:
    """(B, ..., C) channel-last tokens as one (B, N, C) sequence: a sequence stays as it is, a map
    (B, h, w, C) is read row by row. The fusion and the losses take sequences whatever the backbone."""
    return tokens.flatten(1, -2)


@dataclass
class ImageOutput:
    """What the image side gives the fusion and the losses, every field a (B, N, .) sequence.

    ``tokens``: all tokens after the final norm of the reported pass (top-down for a top-down model);
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
    """A zoo backbone (``vit``, the release's name for it) and, when it is top-down, the text-to-image
    prior projection. ``num_prefix_tokens``: how many tokens of the sequence are not patches (a class
    token), which the mask statistics skip (0 for a backbone that gives a map, such as RVT)."""

    def __init__(self, vit: nn.Module, text_dim: int, prior_mode: str = 'paper', alpha: Optional[float] = None):
        super().__init__()
        mode = resolve_prior_mode(prior_mode)
        self.vit = vit
        self.top_down = bool(getattr(vit, 'is_top_down', False))
        self.prior_mode = prior_mode
        self.width = vit.num_features
        self.num_prefix_tokens = int(getattr(vit, 'num_prefix_tokens', 0))
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
            return ImageOutput(as_sequence(self.vit.forward_features(images)))
        if text_prior is None:
            raise ValueError('a top-down image encoder needs a text prior (B, text_dim)')
        prior, alpha = self.vit.steering(self.prompt_decoder(text_prior), alpha=self.alpha)
        tokens1 = self.vit.bottom_up(images)
        signals, mask = self.vit.top_down_signals(tokens1, prior, alpha)
        tokens2, vloss = self.vit.second_pass(images, signals, var_loss)
        return ImageOutput(as_sequence(tokens2), as_sequence(tokens1), prior, as_sequence(mask), vloss)

    def load_release_state_dict(self, state_dict: Dict[str, torch.Tensor]) -> None:
        """Load the release's image-encoder keys (timm ViT keys + ``decoders.*`` + ``prompt_decoder.*``)
        strictly; a mismatch lists every key."""
        ours = {('' if k.startswith('prompt_decoder.') else 'vit.') + k: v for k, v in state_dict.items()}
        missing, unexpected = self.load_state_dict(ours, strict=False)
        if missing or unexpected:
            raise KeyError(f'release image-encoder weights do not fit: missing {missing}, unexpected {unexpected}')


#: What METER's first-token pooling asks of a backbone whose constructor offers it (timm's ViT family,
#: recognised by its ``has_class_token`` attribute): a class token first, and the final norm on every
#: token (timm's ViT moves it after the pooling unless it pools the token). A backbone without the
#: option is built as it is: FAN's class token comes first anyway; a map backbone (RVT) has none, and
#: the fusion's first image token is then its top-left position, which co-attention has mixed.
FIRST_TOKEN: Mapping[str, Any] = MappingProxyType(dict(class_token=True, global_pool='token'))


def build_image_encoder(name: str, text_dim: int, prior_mode: str = 'paper', alpha: Optional[float] = None,
                        **vit_kwargs) -> SteeredImageEncoder:
    """``timm.create_model(name)`` of the zoo without a classifier (with ``FIRST_TOKEN`` where the model
    offers it), wrapped with the prior projection. ``vit_kwargs`` override the zoo's config and
    ``FIRST_TOKEN`` (tests build micro models this way). Whether the model offers the class-token option
    is read from a copy built on the meta device (no memory, no random numbers drawn)."""
    kwargs = {'num_classes': 0, **vit_kwargs}
    with torch.device('meta'):
        offers_class_token = hasattr(timm.create_model(name, **kwargs), 'has_class_token')
    vit = timm.create_model(name, **({**FIRST_TOKEN, **kwargs} if offers_class_token else kwargs))
    return SteeredImageEncoder(vit, text_dim, prior_mode, alpha)


#: What the image encoder takes from an image-classification checkpoint (``models.checkpoint.fit_checkpoint``'s
#: keywords): the classifier and the learned prompt are set aside (the text is the prior here), the
#: feedback (decoders, and the bridges of multi-stage backbones) may be missing (a plain backbone's file),
#: the position embedding is resampled timm's way.
IMAGE_ENCODER: Mapping[str, Any] = MappingProxyType(dict(
    set_aside=MappingProxyType({**CLASSIFIER, 'prompt': 'learned prior (the text is the prior here)'}),
    may_miss=('decoders.', 'up_projs.'), resample='timm'))


def load_image_weights(vit: nn.Module, path: str) -> str:
    """Start the image encoder from an ImageNet checkpoint of this project or of the release (read with
    ``weights_only=True``) through the zoo's shared adapter, as ``IMAGE_ENCODER`` says; anything else that
    does not fit is one ``CheckpointError`` naming the file. Returns the adapter's report, for the log."""
    return load_pretrained(vit, path, **IMAGE_ENCODER).summary()
