"""Training objectives.

Plain models are trained with the supervised loss alone. Top-down models (``model.is_top_down``)
are trained with the AbS objective of the paper:

    loss = mean over passes p of  sup(logits_p, target)  +  var_weight * var_loss

where the passes are the bottom-up and the top-down pass and ``var_loss`` is the model's unweighted
variational (feedback reconstruction) loss. The engine never looks at the model: it calls
``model(x, **criterion.model_kwargs)`` and ``criterion(output, target)``.
"""
from typing import Dict, Optional

import torch
import torch.nn as nn
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from models import TopDownOutput

__all__ = ['AbSLoss', 'PlainLoss', 'AsymmetricLoss', 'build_supervised_loss', 'build_multilabel_loss',
           'build_criterion']


class PlainLoss(nn.Module):
    """The supervised loss applied to the model's logits."""
    model_kwargs: Dict = {}

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.model_kwargs = {}
        self.last_terms: Dict[str, torch.Tensor] = {}

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if isinstance(output, TopDownOutput):
            output = output.logits
        return self.base(output, target)


class AbSLoss(nn.Module):
    """AbS objective: supervised loss averaged over the passes + ``var_weight`` x variational loss.

    ``model_kwargs`` (``{'return_aux': True}``) is what the model must be called with so that it
    returns a ``models.TopDownOutput``. After each call, ``last_terms`` holds the detached
    ``sup_loss`` and ``var_loss`` for logging.
    """

    def __init__(self, base: nn.Module, var_weight: float = 0.1):
        super().__init__()
        self.base = base
        self.var_weight = float(var_weight)
        self.model_kwargs = {'return_aux': True}
        self.last_terms: Dict[str, torch.Tensor] = {}

    def forward(self, output, target: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, TopDownOutput):
            raise TypeError('AbSLoss needs the TopDownOutput of model(x, return_aux=True), got '
                            f'{type(output).__name__}; call the model with criterion.model_kwargs')
        sup = torch.stack([self.base(logits, target) for logits in output.pass_logits]).mean()
        loss = sup
        terms = {'sup_loss': sup.detach()}
        if output.var_loss is not None:
            loss = loss + self.var_weight * output.var_loss
            terms['var_loss'] = output.var_loss.detach()
        self.last_terms = terms
        return loss

    def extra_repr(self) -> str:
        return f'var_weight={self.var_weight}'


def build_supervised_loss(mixup_active: bool, smoothing: float = 0.0) -> nn.Module:
    """DeiT's choice: soft-target CE under mixup/cutmix (smoothing is folded into the mixed
    targets), label-smoothing CE with ``smoothing``, plain CE otherwise."""
    if mixup_active:
        return SoftTargetCrossEntropy()
    if smoothing and smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=smoothing)
    return nn.CrossEntropyLoss()


class AsymmetricLoss(nn.Module):
    """Asymmetric loss for multi-hot targets (Ridnik et al., ICCV 2021), summed over classes and images: positives
    ``-(1 - p)^gamma_pos log p``, negatives ``-m^gamma_neg log(1 - m)`` with ``m = max(p - clip, 0)``, so that
    easy negatives (most of the K classes of every image) count little. The IDA release's option."""

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05, eps: float = 1e-8):
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(logits.float())
        p_neg = (p - self.clip).clamp(min=0) if self.clip > 0 else p
        pos = target * (1 - p).pow(self.gamma_pos) * torch.log(p.clamp(min=self.eps))
        neg = (1 - target) * p_neg.pow(self.gamma_neg) * torch.log((1 - p_neg).clamp(min=self.eps))
        return -(pos + neg).sum()

    def extra_repr(self) -> str:
        return f'gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, clip={self.clip}'


def build_multilabel_loss(args) -> nn.Module:
    """``--loss multilabel_soft_margin``: ``MultiLabelSoftMarginLoss(reduction='sum')``, what the IDA release
    trains with (the per-image mean over classes, summed over the batch); ``--loss asl``: ``AsymmetricLoss``."""
    if args.loss == 'asl':
        return AsymmetricLoss(args.asl_gamma_neg, args.asl_gamma_pos, args.asl_clip)
    return nn.MultiLabelSoftMarginLoss(reduction='sum')


def build_criterion(args, model: nn.Module, mixup_active: bool) -> nn.Module:
    """The training criterion for ``model``: ``AbSLoss`` for top-down models, ``PlainLoss`` otherwise; the
    supervised loss is ``--loss``'s (cross-entropy, or a multi-label loss for multi-hot targets)."""
    if getattr(args, 'loss', 'ce') in ('multilabel_soft_margin', 'asl'):
        base = build_multilabel_loss(args)
    else:
        base = build_supervised_loss(mixup_active, getattr(args, 'smoothing', 0.0))
    if getattr(model, 'is_top_down', False):
        return AbSLoss(base, var_weight=getattr(args, 'var_loss', 0.1))
    return PlainLoss(base)
