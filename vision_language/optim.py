"""METER's optimiser and schedule: AdamW with per-part learning-rate multipliers, no weight decay on
biases and norms, linear warm-up then linear decay to zero (per optimiser update)."""
from typing import Dict, List, Tuple

import torch
import torch.nn as nn

__all__ = ['PART_PREFIXES', 'parameter_part', 'param_groups', 'build_optimizer', 'warmup_linear_decay']

#: which part a parameter belongs to, by name prefix (first match wins); everything else is ``base``
#: (the pretrained text and image encoders)
PART_PREFIXES: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ('heads', ('vqa_head.', 'itm_head.', 'rank_head.')),
    ('feedback', ('image_encoder.vit.decoders.', 'image_encoder.prompt_decoder.', 'prior_logit_scale')),
    ('cross_modal', ('fusion.', 'cross_modal_text_transform.', 'cross_modal_image_transform.',
                     'token_type_embeddings.', 'text_pooler.', 'image_pooler.')),
)


def parameter_part(name: str) -> str:
    for part, prefixes in PART_PREFIXES:
        if name.startswith(prefixes):
            return part
    return 'base'


def _no_decay(name: str, param: nn.Parameter, module_of: Dict[str, nn.Module]) -> bool:
    """Biases, norm scales and other 1-d tensors (and the position/class tokens and the prior scale)."""
    owner = module_of.get(name.rsplit('.', 1)[0])
    norm = isinstance(owner, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d))
    return name.endswith('.bias') or norm or param.ndim <= 1 or name.endswith(('pos_embed', 'cls_token'))


def param_groups(model: nn.Module, lr: float = 1e-5, weight_decay: float = 0.01,
                 multipliers: Dict[str, float] = None) -> List[dict]:
    """One group per (part, decay) pair that has parameters; every trainable parameter in exactly one.
    ``multipliers``: lr factor per part (default: METER's VQA setting, heads x50, cross-modal x10,
    feedback x3, base x1)."""
    mult = {'base': 1.0, 'cross_modal': 10.0, 'heads': 50.0, 'feedback': 3.0, **(multipliers or {})}
    module_of = dict(model.named_modules())
    groups: Dict[Tuple[str, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part, no_decay = parameter_part(name), _no_decay(name, p, module_of)
        g = groups.setdefault((part, no_decay), {
            'params': [], 'names': [], 'part': part, 'lr': lr * mult[part], 'lr_mult': mult[part],
            'weight_decay': 0.0 if no_decay else weight_decay})
        g['params'].append(p)
        g['names'].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, lr: float = 1e-5, weight_decay: float = 0.01,
                    multipliers: Dict[str, float] = None) -> torch.optim.AdamW:
    """AdamW, betas (0.9, 0.98), eps 1e-8 (METER)."""
    return torch.optim.AdamW(param_groups(model, lr, weight_decay, multipliers), lr=lr, betas=(0.9, 0.98), eps=1e-8)


def warmup_linear_decay(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float = 0.1
                        ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` (a fraction) of ``total_steps`` updates, then linear decay to 0."""
    if total_steps < 1:
        raise ValueError(f'total_steps must be at least 1, got {total_steps}')
    warm = max(1, int(round(warmup * total_steps)))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
