"""Analysis-by-synthesis (AbS) top-down attention: everything that does not depend on the backbone.

A top-down model runs its backbone twice:

1. **bottom-up pass**: the plain forward, giving output tokens ``z`` (channel-last, ``(..., C)``);
2. **prior reweighting**: ``z_i <- alpha * clamp(cos(xi, z_i), 0, 1) * z_i``; ``xi`` is the learned
   ``prompt`` for classification, a class prototype or a text embedding when steering;
3. **feedback**: one token-wise decoder per block, walked from the top block down. Decoder ``l``
   hands ``linear(x)`` to the block below and gives block ``l`` its top-down signal ``linear2(x)``;
4. **top-down pass**: the same blocks again from the input; each attention adds its block's signal
   to its VALUE (how exactly is the only thing a backbone supplies, see ``models/absvit.py``).

Training adds the **variational loss**: each decoder's ``linear`` reconstructs its block's input from
the block's output, with stop-gradient on both, so only the decoders learn from it.

``TopDownMixin`` orchestrates the two passes for any backbone that provides
``forward_features(x, td=None, collect=False)`` and ``forward_head(tokens)``. The comparison models
of the paper (Tables 3, 5, 6) are modes of the same orchestration (``TD_MODES``).
"""
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    'TD_MODES', 'TopDownOutput', 'TokenDecoder', 'prior_mask', 'reweight', 'feedback',
    'variational_loss', 'TopDownMixin',
]

#: How the top-down signal enters the second pass.
#: ``abs``       AbSViT: reweight, feedback, td added to the attention value.
#: ``qkv``       AbSViT-QKV: as ``abs`` but td is added to query, key and value.
#: ``feedback``  Feedback: feedback of the un-reweighted tokens (no prior), td added to the value.
#: ``maskatt``   MaskAtt: no decoders; the prior's soft token mask multiplies every attention's value.
#: ``perceiver`` PerceiverIO: no second pass; the reweighted pass-1 tokens go straight to the head.
TD_MODES = ('abs', 'qkv', 'feedback', 'maskatt', 'perceiver')
MODES_WITH_DECODERS = ('abs', 'qkv', 'feedback')
MODES_WITH_PRIOR = ('abs', 'qkv', 'maskatt', 'perceiver')


@dataclass
class TopDownOutput:
    """What one top-down forward returns when asked for more than the logits.

    ``pass_logits`` holds one entry per pass (the losses average over them); ``var_loss`` is the
    unweighted sum over blocks (``None`` when the mode has no decoders); ``mask`` is the prior's
    token mask ``clamp(cos, 0, 1)`` of shape ``tokens.shape[:-1] + (1,)`` (``None`` without a prior).
    """
    logits: torch.Tensor
    pass_logits: Tuple[torch.Tensor, ...]
    var_loss: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None


class TokenDecoder(nn.Module):
    """One block's feedback decoder: two bias-free token-wise linears (release names kept).

    ``linear`` maps the block's output space to its input space (what is handed down, and what the
    variational loss trains); ``linear2`` turns that into the block's top-down signal.
    """

    def __init__(self, dim: int, dim_in: Optional[int] = None):
        super().__init__()
        dim_in = dim if dim_in is None else dim_in
        self.linear = nn.Linear(dim, dim_in, bias=False)
        self.linear2 = nn.Linear(dim_in, dim_in, bias=False)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.linear(x)
        return x, self.linear2(x)


def prior_mask(tokens: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """``clamp(cos(prior, token), 0, 1)`` for every token; channel-last ``tokens`` of any rank.

    ``prior`` is ``(C,)`` (shared by the batch) or ``(B, C)`` (one per image).
    Returns ``tokens.shape[:-1] + (1,)``.
    """
    C = tokens.shape[-1]
    if prior.shape[-1] != C or prior.dim() not in (1, 2):
        raise ValueError(f'prior must be ({C},) or (batch, {C}); got {tuple(prior.shape)}')
    prior = F.normalize(prior.to(tokens.dtype), dim=-1)
    tokens = F.normalize(tokens, dim=-1)
    if prior.dim() == 1:
        cos = tokens @ prior.unsqueeze(-1)
    else:
        if prior.shape[0] != tokens.shape[0]:
            raise ValueError(f'per-image prior has {prior.shape[0]} rows for a batch of {tokens.shape[0]}')
        cos = (tokens * prior.view(prior.shape[0], *([1] * (tokens.dim() - 2)), C)).sum(-1, keepdim=True)
    return cos.clamp(0, 1)


def reweight(tokens: torch.Tensor, prior: torch.Tensor, alpha: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Prior reweighting ``alpha * clamp(cos(prior, z), 0, 1) * z``; returns ``(tokens, mask)``."""
    mask = prior_mask(tokens, prior)
    return tokens * mask * alpha, mask


Bridge = Callable[[int, torch.Tensor], torch.Tensor]


def feedback(decoders: Sequence[TokenDecoder], x: torch.Tensor, bridge: Optional[Bridge] = None) -> List[torch.Tensor]:
    """Walk the decoders from the top block down; returns the top-down signal of every block.

    ``bridge(i, x)`` (optional) carries the signal from block ``i``'s input space to block ``i-1``'s
    output space when they differ (e.g. DAT's stage boundaries, where it mirrors the downsampling).
    """
    td: List[Optional[torch.Tensor]] = [None] * len(decoders)
    for i in range(len(decoders) - 1, -1, -1):
        x, td[i] = decoders[i](x)
        if bridge is not None and i > 0:
            x = bridge(i, x)
    return td


def variational_loss(decoders: Sequence[TokenDecoder], block_inputs: Sequence[torch.Tensor],
                     block_outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_l mse(decoder_l.linear(sg(out_l)), sg(in_l))``: trains only the decoders (unweighted)."""
    if not (len(decoders) == len(block_inputs) == len(block_outputs)):
        raise ValueError(f'{len(decoders)} decoders for {len(block_inputs)} inputs / {len(block_outputs)} outputs')
    losses = [F.mse_loss(dec.linear(out.detach()), inp.detach())
              for dec, inp, out in zip(decoders, block_inputs, block_outputs)]
    return torch.stack(losses).sum()


class TopDownMixin:
    """Two-pass AbS orchestration shared by every top-down backbone.

    A backbone mixing this in calls ``init_top_down`` in its constructor and provides:

    * ``forward_features(x, td=None, collect=False)``: tokens after the final norm, channel-last. With
      ``td`` (one signal per block: a tensor to add, or a mask for ``maskatt``) it runs the top-down
      pass; with ``collect=True`` it returns ``(tokens, block_inputs, block_outputs)``;
    * ``forward_head(tokens)``: logits;
    * optionally ``feedback_bridge(i, x)`` when decoders change resolution or width (see ``feedback``).
    """
    is_top_down = True

    def init_top_down(self, decoder_dims: Sequence[Union[int, Tuple[int, int]]], td_mode: str = 'abs',
                      alpha: float = 1.0, prior_dim: Optional[int] = None) -> None:
        """Create ``prompt`` and ``decoders`` (release names) as the mode needs them.

        ``decoder_dims`` has one entry per block: ``dim`` or ``(dim_out, dim_in)`` of that block.
        """
        if td_mode not in TD_MODES:
            raise ValueError(f"td_mode must be one of {TD_MODES}, got '{td_mode}'")
        self.td_mode = td_mode
        self.alpha = alpha
        top_dim = decoder_dims[-1] if isinstance(decoder_dims[-1], int) else decoder_dims[-1][0]
        prior_dim = top_dim if prior_dim is None else prior_dim
        # Modes that never use a part do not create it, so DDP sees no unused parameters.
        self.prompt = nn.Parameter(torch.randn(prior_dim)) if td_mode in MODES_WITH_PRIOR else None
        self.decoders = nn.ModuleList(
            [TokenDecoder(*((d,) if isinstance(d, int) else d)) for d in decoder_dims]
        ) if td_mode in MODES_WITH_DECODERS else None

    def no_weight_decay_top_down(self) -> set:
        return {'prompt'} if self.prompt is not None else set()

    # -- prior -----------------------------------------------------------------------------------
    def resolve_prior(self, prior: Optional[torch.Tensor] = None,
                      classes: Optional[Union[int, Sequence[int], torch.Tensor]] = None) -> Optional[torch.Tensor]:
        """The prior vector(s): an explicit ``prior`` ``(C,)``/``(B, C)``, the class prototypes of
        ``classes`` (rows of the classifier weight), or the learned ``prompt``."""
        if prior is not None and classes is not None:
            raise ValueError('give either prior or classes, not both')
        if classes is not None:
            head = self.get_classifier()
            if not isinstance(head, nn.Linear):
                raise ValueError('class-prototype priors need a linear classifier head')
            idx = torch.as_tensor(classes, device=head.weight.device, dtype=torch.long)
            if idx.numel() and (idx.min() < 0 or idx.max() >= head.weight.shape[0]):
                raise ValueError(f'class index out of range [0, {head.weight.shape[0]}): {classes}')
            return head.weight[idx]
        return self.prompt if prior is None else prior

    # -- the two passes --------------------------------------------------------------------------
    def top_down_signals(self, tokens: torch.Tensor, prior: Optional[torch.Tensor], alpha: float):
        """From pass-1 tokens to the per-block signals of pass 2; returns ``(signals, mask)``."""
        bridge = getattr(self, 'feedback_bridge', None)
        if self.td_mode == 'feedback':
            return feedback(self.decoders, tokens, bridge), None
        if prior is None:
            raise ValueError(f"td_mode '{self.td_mode}' needs a prior but the model has none")
        if self.td_mode == 'maskatt':
            mask = prior_mask(tokens, prior)
            return [mask] * self.num_td_blocks(), mask
        weighted, mask = reweight(tokens, prior, alpha)
        return feedback(self.decoders, weighted, bridge), mask

    def num_td_blocks(self) -> int:
        return len(self.blocks)

    def forward_top_down(self, x: torch.Tensor, prior: Optional[torch.Tensor] = None,
                         classes=None, alpha: Optional[float] = None, var_loss: bool = True) -> TopDownOutput:
        """Both passes; the documented call for training and steering.

        Returns the final logits, each pass's logits and (with ``var_loss``) the variational loss.
        """
        alpha = self.alpha if alpha is None else alpha
        prior = self.resolve_prior(prior, classes)
        tokens = self.forward_features(x)
        logits1 = self.forward_head(tokens)
        if self.td_mode == 'perceiver':
            weighted, mask = reweight(tokens, prior, alpha)
            logits2 = self.forward_head(weighted)
            return TopDownOutput(logits2, (logits1, logits2), None, mask)
        signals, mask = self.top_down_signals(tokens, prior, alpha)
        want_var = var_loss and self.decoders is not None
        out = self.forward_features(x, td=signals, collect=want_var)
        if want_var:
            tokens2, ins, outs = out
            vloss = variational_loss(self.decoders, ins, outs)
        else:
            tokens2, vloss = out, None
        logits2 = self.forward_head(tokens2)
        return TopDownOutput(logits2, (logits1, logits2), vloss, mask)

    # -- inspection ------------------------------------------------------------------------------
    @torch.no_grad()
    def inspect(self, x: torch.Tensor, prior: Optional[torch.Tensor] = None, classes=None,
                alpha: Optional[float] = None, depth: Optional[int] = None, attn_weights: bool = False,
                feature_blocks: Sequence[int] = ()) -> dict:
        """Attention maps for demos and analysis (no gradients).

        Returns a dict with
          ``bottom_up`` / ``top_down``: token-norm maps (B, h, w) after ``depth`` blocks of pass 1 / 2
            (default ``len(blocks) - 3``, as the release's demo shows them);
          ``prior_mask``: the prior's token mask (B, h, w) (``None`` in ``feedback`` mode);
          ``logits_bottom_up`` / ``logits``: pass-1 / final logits;
          ``attn_bottom_up`` / ``attn_top_down`` (with ``attn_weights``): per-block softmax weights
            (B, heads, N, N), where the backbone records them;
          ``features``: {block index: (B, C, h, w)} of pass 2 for ``feature_blocks``.
        """
        n_blocks = self.num_td_blocks()
        depth = n_blocks - 3 if depth is None else depth
        if not 1 <= depth <= n_blocks:
            raise ValueError(f'depth must be in [1, {n_blocks}], got {depth}')
        for i in feature_blocks:
            if not 0 <= i < n_blocks:
                raise ValueError(f'feature block {i} out of range [0, {n_blocks})')
        alpha = self.alpha if alpha is None else alpha
        prior = self.resolve_prior(prior, classes)
        hw = x.shape[-2:]
        to_map = lambda t: self.tokens_to_map(t, hw)

        with self.recording_attention(attn_weights) as attn1:
            tokens, _, outs1 = self.forward_features(x, collect=True)
        result = {'logits_bottom_up': self.forward_head(tokens),
                  'bottom_up': to_map(outs1[depth - 1]).norm(dim=1), 'attn_bottom_up': attn1}
        if self.td_mode == 'perceiver':
            weighted, mask = reweight(tokens, prior, alpha)
            result.update(logits=self.forward_head(weighted), top_down=None, attn_top_down=None, features={},
                          prior_mask=to_map(mask)[:, 0])
            return result
        signals, mask = self.top_down_signals(tokens, prior, alpha)
        with self.recording_attention(attn_weights) as attn2:
            tokens2, _, outs2 = self.forward_features(x, td=signals, collect=True)
        result.update(logits=self.forward_head(tokens2), top_down=to_map(outs2[depth - 1]).norm(dim=1),
                      attn_top_down=attn2, prior_mask=None if mask is None else to_map(mask)[:, 0],
                      features={i: to_map(outs2[i]) for i in feature_blocks})
        return result

    @contextmanager
    def recording_attention(self, enabled: bool = True):
        """Within the context, attentions keep their softmax weights; yields the list they fill."""
        found: List[torch.Tensor] = []
        modules = [m for m in self.modules() if hasattr(m, 'record_weights')] if enabled else []
        for m in modules:
            m.record_weights = True
        try:
            yield found
        finally:
            for m in modules:
                m.record_weights = False
                found.append(m.attn_weights)
                m.attn_weights = None

    def forward(self, x: torch.Tensor, prior: Optional[torch.Tensor] = None, classes=None,
                alpha: Optional[float] = None, return_aux: bool = False):
        """``model(x)`` gives the final logits (no variational-loss work); ``return_aux=True`` gives a
        ``TopDownOutput`` with both passes and the variational loss (what the training loss needs,
        and the call that DDP wraps)."""
        out = self.forward_top_down(x, prior, classes, alpha, var_loss=return_aux)
        return out if return_aux else out.logits
