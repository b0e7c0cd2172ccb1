"""Steering diagnostics: is the text prior actually steering the image encoder?

* ``mask_positive``: share of patch tokens whose prior mask ``clamp(cos, 0, 1)`` is above zero;
* ``mask_mean``: the mask's mean over patch tokens;
* ``region_mass``: share of the mask's mass on the patch tokens of the region the text names (where the
  data knows it; 1 / number of regions is chance);
* ``swap_answer_change``: share of answers that change when each question is steered by the prior of
  another question (same image, same question text everywhere else), and ``swap_score_drop``: the
  accuracy lost by that swap.
"""
from typing import Dict, Optional

import torch

__all__ = ['mask_statistics', 'swap_statistics']


def mask_statistics(mask: torch.Tensor, num_prefix_tokens: int = 1,
                    region_tokens: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """``mask`` (B, N, 1) over all tokens; ``region_tokens`` (B, N - prefix) boolean, the named region."""
    m = mask[:, num_prefix_tokens:, 0].float()
    out = {'mask_positive': (m > 0).float().mean().item(), 'mask_mean': m.mean().item()}
    if region_tokens is not None:
        mass = (m * region_tokens.float()).sum(1) / m.sum(1).clamp_min(1e-12)
        out['region_mass'] = mass.mean().item()
    return out


def swap_statistics(answers: torch.Tensor, swapped_answers: torch.Tensor, targets: torch.Tensor) -> Dict[str, float]:
    """Predicted answer indices with the own prior and with another question's, against the targets."""
    own = (answers == targets).float().mean().item()
    other = (swapped_answers == targets).float().mean().item()
    return {'swap_answer_change': (answers != swapped_answers).float().mean().item(), 'swap_score_drop': own - other}
