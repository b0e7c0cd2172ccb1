"""Training objectives.

Plain models are trained with the supervised loss alone. Top-down models (``model.is_top_down``)
are trained with the AbS objective of the paper:

    loss = mean over passes p of  sup(logits_p, target)  +  var_weight * var_loss

where the passes are the bottom-up and the top-down pass and ``var_loss`` is the model's unweighted
variational (feedback reconstruction) loss. The engine never looks at the model: it calls
``model(x, **criterion.model_kwargs)`` and ``criterion(output, target)`` (``criterion(output, target,
prior_ids)`` for batches of prior-conditioned training, which ``PriorTargetLoss`` reads).
"""
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

import misc
from models import TopDownOutput

__all__ = ['AbSLoss', 'PlainLoss', 'PriorTargetLoss', 'ABSENT_TARGETS', 'AsymmetricLoss', 'build_supervised_loss',
           'build_multilabel_loss', 'build_criterion', 'BatchPriors', 'takes_prior', 'attach_prior_table',
           'PRIOR_SOURCES']


class PlainLoss(nn.Module):
    """The supervised loss applied to the model's logits."""
    model_kwargs: Dict = {}

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.model_kwargs = {}
        self.last_terms: Dict[str, torch.Tensor] = {}

    def forward(self, output: torch.Tensor, target: torch.Tensor,
                prior_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        if isinstance(output, TopDownOutput):
            output = output.logits
        return _supervised(self.base, output, target, prior_ids)


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

    def forward(self, output, target: torch.Tensor, prior_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not isinstance(output, TopDownOutput):
            raise TypeError('AbSLoss needs the TopDownOutput of model(x, return_aux=True), got '
                            f'{type(output).__name__}; call the model with criterion.model_kwargs')
        sup = torch.stack([_supervised(self.base, logits, target, prior_ids) for logits in output.pass_logits]).mean()
        loss = sup
        terms = {'sup_loss': sup.detach()}
        if output.var_loss is not None:
            loss = loss + self.var_weight * output.var_loss
            terms['var_loss'] = output.var_loss.detach()
        self.last_terms = terms
        return loss

    def extra_repr(self) -> str:
        return f'var_weight={self.var_weight}'


def _supervised(base: nn.Module, logits: torch.Tensor, target: torch.Tensor,
                prior_ids: Optional[torch.Tensor]) -> torch.Tensor:
    """``base(logits, target)``; with the batch's prior ids, ``base(logits, target, prior_ids)``, which
    only a loss of prior-conditioned training (``PriorTargetLoss``) takes."""
    if prior_ids is None:
        return base(logits, target)
    if not isinstance(base, PriorTargetLoss):
        raise TypeError(f'batches with prior ids (composites) need a PriorTargetLoss, got {type(base).__name__}')
    return base(logits, target, prior_ids)


#: What a composite whose prior names an absent class is trained towards (``--absent-target``).
ABSENT_TARGETS = ('any', 'soft')


class PriorTargetLoss(nn.Module):
    """Soft-target cross-entropy for prior-conditioned training, where a composite's prior may name a
    class its image does not hold (its id is outside the target's classes).

    ``absent='soft'``: every row is ``-sum_c t_c log p_c``; such a composite is then asked for the soft label
    of its items (1/k each), whichever item the prior's mask selects. ``absent='any'``: those rows are
    ``-(1 - s) log sum_{c in items} p_c - (s / K) sum_c log p_c``: naming any item present is right, the
    absent class never is (``s``: the label smoothing folded into the row, ``K`` times its minimum; for
    one class this is the row's soft cross-entropy). Why: under the soft label, a model that follows the
    prior to the item it resembles, which is what attention does, is told it is wrong, so it must read
    from the mask's values whether the prior's class is present: the read that, when it errs, names the
    absent class. Under ``any`` following the prior costs nothing; echoing it still costs the same."""

    def __init__(self, absent: str = 'any'):
        super().__init__()
        if absent not in ABSENT_TARGETS:
            raise ValueError(f'absent-prior target must be one of {ABSENT_TARGETS}, got {absent!r}')
        self.absent = absent

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                prior_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=-1)
        t = target.float()
        soft = -(t * logp).sum(-1)
        if self.absent == 'soft' or prior_ids is None:
            return soft.mean()
        floor = t.amin(-1, keepdim=True)  # s / K: the smoothing every class gets
        held = t > floor + 1e-6  # the classes the image holds
        ids = prior_ids.to(logits.device).long()
        absent = (ids >= 0) & ~held.gather(1, ids.clamp(min=0)[:, None])[:, 0]
        any_item = -torch.logsumexp(logp.masked_fill(~held, float('-inf')), dim=-1)
        smooth = floor[:, 0] * t.shape[-1]
        any_loss = (1 - smooth) * any_item - floor[:, 0] * logp.sum(-1)
        return torch.where(absent, any_loss, soft).mean()

    def extra_repr(self) -> str:
        return f'absent={self.absent!r}'


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


def build_criterion(args, model: nn.Module, mixup_active: bool, composites: bool = False) -> nn.Module:
    """The training criterion for ``model``: ``AbSLoss`` for top-down models, ``PlainLoss`` otherwise; the
    supervised loss is ``--loss``'s (cross-entropy, or a multi-label loss for multi-hot targets), and with
    ``composites`` (prior-conditioned training) ``PriorTargetLoss`` with ``--absent-target``."""
    if composites:
        base = PriorTargetLoss(getattr(args, 'absent_target', 'any'))
    elif getattr(args, 'loss', 'ce') in ('multilabel_soft_margin', 'asl'):
        base = build_multilabel_loss(args)
    else:
        base = build_supervised_loss(mixup_active, getattr(args, 'smoothing', 0.0))
    if getattr(model, 'is_top_down', False):
        return AbSLoss(base, var_weight=getattr(args, 'var_loss', 0.1))
    return PlainLoss(base)


# ------------------------------------------------------------------------------------------------
# Prior-conditioned training: the per-sample priors the model is called with.

#: Where a class prior comes from in prior-conditioned training (``--prior-source``).
PRIOR_SOURCES = ('classifier', 'table')


def takes_prior(model: nn.Module) -> bool:
    """Whether the model is steered by a prior: a top-down mode with a learned ``prompt`` (not Feedback,
    not a plain backbone)."""
    return getattr(misc.unwrap_model(model), 'prompt', None) is not None


def attach_prior_table(model: nn.Module, num_classes: int) -> nn.Parameter:
    """Give ``model`` a learned class-embedding table ``prior_table`` (num_classes, prior width), the class
    priors of ``--prior-source table``: a parameter of the model, so the optimizer, EMA, DDP and checkpoints
    hold it like any weight. Rows start as random directions, like the prompt."""
    prompt = getattr(model, 'prompt', None)
    if prompt is None:
        raise ValueError(f'{type(model).__name__} takes no prior; a prior table needs a top-down mode with a prompt')
    table = nn.Parameter(torch.randn(num_classes, prompt.shape[-1], device=prompt.device, dtype=prompt.dtype))
    model.register_parameter('prior_table', table)
    return table


class BatchPriors:
    """The per-sample prior vectors ``(B, C)`` of a batch of prior ids: class ``c >= 0`` gives class c's
    prior (its classifier row, ``class_prototypes()``, or its row of the learned ``prior_table``), ``-1`` the
    learned prompt. Built on the unwrapped model and evaluated outside the DDP forward; every row comes from
    one ``torch.where`` over the whole batch, so the prompt and the class priors are in every step's graph
    (DDP then always sees their gradients, zero or not)."""

    def __init__(self, model: nn.Module, source: str = 'classifier'):
        if source not in PRIOR_SOURCES:
            raise ValueError(f'prior source must be one of {PRIOR_SOURCES}, got {source!r}')
        self.model, self.source = misc.unwrap_model(model), source
        if not takes_prior(self.model):
            raise ValueError(f'{type(self.model).__name__} takes no prior')
        if self.class_rows() is None:
            raise ValueError('class priors need a linear classifier head (class_prototypes) or --prior-source table')

    def class_rows(self) -> Optional[torch.Tensor]:
        if self.source == 'table':
            return getattr(self.model, 'prior_table', None)
        return self.model.class_prototypes()

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.class_rows()
        if ids.device.type == 'cpu' and ids.numel() and int(ids.max()) >= rows.shape[0]:  # no sync on devices
            raise ValueError(f'prior class {int(ids.max())} out of range for {rows.shape[0]} classes')
        chosen = rows[ids.clamp(min=0)]
        prompt = self.model.prompt.to(chosen.dtype).expand_as(chosen)
        return torch.where((ids >= 0)[:, None], chosen, prompt)
