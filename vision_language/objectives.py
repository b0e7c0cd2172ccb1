"""The training objectives: VQA soft-score BCE, image-text matching, ranking, the CLIP-style prior
loss (the paper's Eq. 15) and the variational loss, combined per task as the prior mode says."""
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from vision_language.model import VLModel, VLOutput

__all__ = ['vqa_loss', 'itm_loss', 'rank_loss', 'prior_loss', 'total_loss']


def vqa_loss(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """BCE against the soft scores, summed over answers and averaged over questions (METER's
    ``mean BCE * num_answers``)."""
    return F.binary_cross_entropy_with_logits(logits, soft_targets) * soft_targets.shape[1]


def itm_loss(logits: torch.Tensor, is_match: torch.Tensor) -> torch.Tensor:
    """Two-way cross-entropy: does the caption belong to the image?"""
    return F.cross_entropy(logits, is_match.long())


def rank_loss(scores: torch.Tensor) -> torch.Tensor:
    """``scores`` (B, 1 + K): each image's true caption first, then K negatives; softmax cross-entropy."""
    return F.cross_entropy(scores, torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device))


def prior_loss(prior: torch.Tensor, bottom_up: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP-style symmetric InfoNCE between each projected text prior (B, C) and its image's pooled
    pass-1 tokens (B, N, C): the prior must point at what its own image shows, so its cosine mask
    selects tokens. The scale is CLIP's learned inverse temperature, clamped at 100."""
    p = F.normalize(prior, dim=-1)
    v = F.normalize(bottom_up.mean(dim=1), dim=-1)
    logits = logit_scale.exp().clamp(max=100) * p @ v.t()
    target = torch.arange(p.shape[0], device=p.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def total_loss(model: VLModel, out: VLOutput, task_loss: torch.Tensor, task: str, var_weight: float = 0.1,
               prior_weight: float = 1.0, matched: Optional[torch.Tensor] = None
               ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The task loss plus what the prior mode adds; returns ``(loss, terms)`` (terms detached).
    ``matched`` (B,) boolean: the pairs whose text describes the image (the prior loss uses only
    those; default all)."""
    terms: Dict[str, torch.Tensor] = {task: task_loss.detach()}
    loss = task_loss
    if model.uses_var_loss(task) and out.image.var_loss is not None:
        loss = loss + var_weight * out.image.var_loss
        terms['var'] = out.image.var_loss.detach()
    if model.uses_prior_loss:
        prior, bottom_up = out.image.prior, out.image.bottom_up
        if matched is not None:
            prior, bottom_up = prior[matched], bottom_up[matched]
        pl = prior_loss(prior, bottom_up, model.prior_logit_scale)
        loss = loss + prior_weight * pl
        terms['prior'] = pl.detach()
    return loss, terms
