"""Top-down steering of a segmentor: run its top-down backbone (AbSViT, AbS-RVT, AbS-FAN, ...) with another
prior than the learned prompt.

The prior lives in the space of the backbone's final tokens (its width, ``backbone.width``). A class's
prior is taken from the decode head: the mean final-block feature over the pixels the head assigns to that
class (``class_prior``), i.e. what that class looks like to the backbone in this image; any vector of the
backbone's width works too. ``steered(segmentor, prior, alpha)`` runs the segmentor under it, and
``steering_effect`` reports how the features and the predicted map change.
"""
from contextlib import contextmanager
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from segmentation.exceptions import BackboneInputError

__all__ = ['steered', 'final_map_and_logits', 'class_prior', 'prior_from_outputs', 'steering_effect']


@contextmanager
def steered(segmentor, prior: Optional[torch.Tensor], alpha: Optional[float] = None):
    """Within the context the segmentor's backbone uses ``prior`` ((C,) or (B, C)) and ``alpha``."""
    backbone = segmentor.backbone
    if not getattr(backbone, 'top_down', False):
        raise BackboneInputError('steering needs a top-down backbone (top_down=True); this one is bottom-up')
    width = backbone.width
    if prior is not None and prior.shape[-1] != width:
        raise BackboneInputError(f'a prior for this backbone has {width} channels, got shape {tuple(prior.shape)}')
    saved = backbone.prior, backbone.alpha
    backbone.prior, backbone.alpha = prior, alpha
    try:
        yield segmentor
    finally:
        backbone.prior, backbone.alpha = saved


def final_map_and_logits(segmentor, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(final backbone map, decode-head logits at image size) of one forward, no gradients."""
    with torch.no_grad():
        feats = segmentor.extract_feat(images)
        logits = segmentor.decode_head.forward(feats)
        logits = F.interpolate(logits, size=images.shape[-2:], mode='bilinear', align_corners=False)
    return feats[-1], logits


def class_prior(segmentor, images: torch.Tensor, class_id: int) -> torch.Tensor:
    """(B, C) priors: the mean final map over the pixels the decode head predicts as ``class_id``
    (over all pixels, weighted by that class's probability, when it predicts none)."""
    return prior_from_outputs(*final_map_and_logits(segmentor, images), class_id)


def prior_from_outputs(feat: torch.Tensor, logits: torch.Tensor, class_id: int) -> torch.Tensor:
    """``class_prior`` from a learned-prompt forward's (final map, logits), for callers that have them."""
    prob = logits.softmax(1)[:, class_id:class_id + 1]
    prob = F.interpolate(prob, size=feat.shape[-2:], mode='bilinear', align_corners=False)
    hard = (F.interpolate(logits, size=feat.shape[-2:], mode='bilinear', align_corners=False).argmax(1, keepdim=True)
            == class_id).float()
    weight = torch.where(hard.flatten(1).sum(1, keepdim=True)[..., None, None] > 0, hard, prob)
    return (feat * weight).sum((2, 3)) / weight.sum((2, 3)).clamp_min(1e-6)


def steering_effect(segmentor, images: torch.Tensor, prior: torch.Tensor, alpha: Optional[float] = None,
                    baseline: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
    """The learned-prompt and steered runs side by side: final maps' per-pixel feature change (B, h, w),
    both predicted maps (B, H, W) and the fraction of pixels whose class changed (B,). ``baseline``: the
    learned-prompt run's ``final_map_and_logits(segmentor, images)``, reused when several priors are
    compared on one batch."""
    feat0, logits0 = baseline if baseline is not None else final_map_and_logits(segmentor, images)
    with steered(segmentor, prior, alpha):
        feat1, logits1 = final_map_and_logits(segmentor, images)
    pred0, pred1 = logits0.argmax(1), logits1.argmax(1)
    change = (feat1 - feat0).norm(dim=1) / feat0.norm(dim=1).clamp_min(1e-6)
    return dict(feature_change=change, pred=pred0, pred_steered=pred1,
                changed=(pred0 != pred1).float().flatten(1).mean(1))
