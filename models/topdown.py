"""Analysis-by-synthesis (AbS) top-down attention: everything that does not depend on the backbone.

A top-down model runs its backbone twice:

1. **bottom-up pass**: the plain forward, giving output tokens ``z`` (channel-last, ``(..., C)``);
2. **prior reweighting**: ``z_i <- alpha * clamp(cos(xi, z_i), 0, 1) * z_i``; ``xi`` is the learned
   ``prompt`` for classification, a class prototype or a text embedding when steering (or the
   vision-language release's rank-1 form, ``set_reweighting('rank1')``, see ``REWEIGHTINGS``);
3. **feedback**: one token-wise decoder per block, walked from the top block down. Decoder ``l``
   hands ``linear(x)`` to the block below and gives block ``l`` its top-down signal ``linear2(x)``;
4. **top-down pass**: the same blocks again from the input; each attention adds its block's signal
   to its VALUE. How a signal enters an attention (``SIGNAL_ROUTES``: value, qkv or mask) and the
   recording of attention weights are ``TopDownAttentionMixin``'s, which each backbone's attention
   inherits; which tensors are its q/k/v projections is all a backbone supplies (``models/absvit.py``).

Training adds the **variational loss**: each decoder's ``linear`` reconstructs its block's input from
the block's output, with stop-gradient on both, so only the decoders learn from it.

The comparison models of the paper (Tables 3, 5, 6) are modes of the same orchestration; what each
mode has is data, ``TOP_DOWN_MODES`` (``TD_MODES`` are their names).

``TopDownMixin`` orchestrates the passes for any backbone that provides (see its docstring)
``forward_pass(x, td=None, collect=False, depth=None)``, ``pass_intermediates(x, td, ...)`` and
``forward_head(tokens)``. Its named steps, ``steering`` (prior and alpha) -> ``bottom_up`` (pass 1) ->
``top_down_signals`` (prior reweighting and feedback) -> ``top_down`` (pass 2; ``second_pass``: pass 2 and
the variational loss), make ``forward_top_down`` (training), ``forward_features``, ``forward_intermediates``
(``signals_for`` -> the backbone's ``pass_intermediates`` -> ``finish_features``), ``inspect`` and the
benchmark's profile.
"""
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function, trunc_normal_
from timm.models._features import feature_take_indices

__all__ = [
    'TD_MODES', 'TOP_DOWN_MODES', 'SIGNALS', 'TopDownMode', 'top_down_mode', 'checked_signal', 'masked_value',
    'TopDownOutput', 'PassOutput', 'TokenDecoder', 'prior_mask', 'reweight', 'REWEIGHTINGS', 'fold_value_signal',
    'SignalRoute', 'SIGNAL_ROUTES', 'TopDownAttentionMixin', 'steering_prior',
    'variational_loss', 'TopDownMixin',
]


class TopDownMode(NamedTuple):
    """One row of the mode table. A NamedTuple rather than a dataclass: immutable, and TorchScript
    reads it as a module attribute."""
    name: str
    prior: bool        #: a prior reweights the pass-1 tokens (learned ``prompt`` unless steered)
    decoders: bool     #: token decoders turn the tokens into one signal per block (variational loss)
    second_pass: bool  #: the blocks run again, each attention taking its block's signal
    signal: str        #: how an attention takes the signal: ``value``, ``qkv``, ``mask`` or ``none``


#: ``abs``       AbSViT: reweight, feedback, td added to the attention value.
#: ``qkv``       AbSViT-QKV: as ``abs`` but td is added to query, key and value.
#: ``feedback``  Feedback: feedback of the un-reweighted tokens (no prior), td added to the value.
#: ``maskatt``   MaskAtt: no decoders; the prior's soft token mask multiplies every attention's value.
#: ``perceiver`` PerceiverIO: no second pass; the reweighted pass-1 tokens go straight to the head.
TOP_DOWN_MODES: Dict[str, TopDownMode] = {m.name: m for m in (
    TopDownMode('abs', prior=True, decoders=True, second_pass=True, signal='value'),
    TopDownMode('qkv', prior=True, decoders=True, second_pass=True, signal='qkv'),
    TopDownMode('feedback', prior=False, decoders=True, second_pass=True, signal='value'),
    TopDownMode('maskatt', prior=True, decoders=False, second_pass=True, signal='mask'),
    TopDownMode('perceiver', prior=True, decoders=False, second_pass=False, signal='none'),
)}
TD_MODES = tuple(TOP_DOWN_MODES)

#: How an attention can take its block's top-down signal: the ``signal`` column of the mode table.
SIGNALS = tuple(dict.fromkeys(m.signal for m in TOP_DOWN_MODES.values()))


def checked_signal(signal: str) -> str:
    """``signal`` if an attention can take it (one of ``SIGNALS``): every backbone's attention checks
    its constructor argument with this, so that a typo fails at construction."""
    if signal not in SIGNALS:
        raise ValueError(f'signal must be one of {SIGNALS}, got {signal!r}')
    return signal


def masked_value(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``maskatt``: the prior's (B, N, 1) token mask multiplies every head's value (B, heads, N, d)."""
    return v * mask.reshape(v.shape[0], 1, v.shape[2], 1).to(v.dtype)


def top_down_mode(td_mode: str, supported: Sequence[str] = TD_MODES, owner: str = 'this model') -> TopDownMode:
    """The table row of ``td_mode``; a clear error for unknown modes and for modes ``owner`` lacks."""
    if td_mode not in TOP_DOWN_MODES or (tuple(supported) == TD_MODES and td_mode not in supported):
        raise ValueError(f"td_mode must be one of {TD_MODES}, got '{td_mode}'")
    if td_mode not in supported:
        raise ValueError(f'{owner} supports td_mode {tuple(supported)}, got {td_mode!r} (the other modes of '
                         'models.topdown are ViT comparison baselines)')
    return TOP_DOWN_MODES[td_mode]


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


class PassOutput(NamedTuple):
    """One pass of a backbone: tokens after the final norm (channel-last) and, when collected, every
    block's channel-last input and output (empty lists otherwise: one return type for TorchScript)."""
    tokens: torch.Tensor
    block_inputs: List[torch.Tensor]
    block_outputs: List[torch.Tensor]


class TokenDecoder(nn.Module):
    """One block's feedback decoder: two bias-free token-wise linears (release names kept).

    ``linear`` maps the block's output space to its input space (what is handed down, and what the
    variational loss trains); ``linear2`` turns that into the block's top-down signal.
    """

    def __init__(self, dim: int, dim_in: Optional[int] = None, device=None, dtype=None):
        super().__init__()
        dim_in = dim if dim_in is None else dim_in
        self.linear = nn.Linear(dim, dim_in, bias=False, device=device, dtype=dtype)
        self.linear2 = nn.Linear(dim_in, dim_in, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.linear(x)
        return x, self.linear2(x)


with warnings.catch_warnings():  # torch >= 2.9 flags every TorchScript API as deprecated, at import
    warnings.simplefilter('ignore', FutureWarning)

    @torch.jit.interface
    class DecoderInterface(nn.Module):
        """TorchScript indexes a ModuleList by a variable (the feedback walks it top-down) only
        through an interface."""

        def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
            pass


@torch.fx.wrap
@register_notrace_function
def prior_mask(tokens: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """``clamp(cos(prior, token), 0, 1)`` for every token; channel-last ``tokens`` of any rank.

    ``prior`` is ``(C,)`` (shared by the batch) or ``(B, C)`` (one per image).
    Returns ``tokens.shape[:-1] + (1,)``. A leaf for FX (its checks read shapes).
    """
    C = tokens.shape[-1]
    if prior.dim() < 1 or prior.dim() > 2 or prior.shape[-1] != C:
        raise ValueError(f'prior must be ({C},) or (batch, {C}); got shape {list(prior.shape)}')
    prior = F.normalize(prior.to(tokens.dtype), dim=-1)
    tokens = F.normalize(tokens, dim=-1)
    if prior.dim() == 1:
        cos = tokens @ prior.unsqueeze(-1)
    else:
        if prior.shape[0] != tokens.shape[0]:
            raise ValueError(f'per-image prior has {prior.shape[0]} rows for a batch of {tokens.shape[0]}')
        shape = [prior.shape[0]] + [1] * (tokens.dim() - 2) + [C]
        cos = (tokens * prior.view(shape)).sum(-1, keepdim=True)
    return cos.clamp(0, 1)


#: How the prior's mask turns the pass-1 tokens into the feedback's input (``reweight``'s ``transform``):
#: ``scale`` (the paper): ``alpha * mask * z``; ``rank1`` (the vision-language release):
#: ``alpha * (mask * z) @ (p p^T)``, every token projected on the unnormalised prior ``p``.
REWEIGHTINGS = ('scale', 'rank1')


def reweight(tokens: torch.Tensor, prior: torch.Tensor, alpha: float = 1.0,
             transform: str = 'scale') -> Tuple[torch.Tensor, torch.Tensor]:
    """Prior reweighting ``alpha * clamp(cos(prior, z), 0, 1) * z`` (``transform='scale'``) or the
    release's rank-1 form ``alpha * (mask * z) @ (p p^T)`` (``'rank1'``); returns ``(tokens, mask)``."""
    mask = prior_mask(tokens, prior)
    if transform == 'scale':
        return tokens * mask * alpha, mask
    if transform != 'rank1':
        raise ValueError("reweighting transform must be 'scale' or 'rank1', got " + transform)
    p = prior.to(tokens.dtype)
    if p.dim() == 2:  # one prior per image, broadcast over the token dimensions
        p = p.view([p.shape[0]] + [1] * (tokens.dim() - 2) + [p.shape[1]])
    along = (tokens * mask * p).sum(-1, keepdim=True)  # (mask * z) . p, per token
    return along * p * alpha, mask


def fold_value_signal(x: torch.Tensor, td: Optional[torch.Tensor],
                      bias: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The release adds the signal through the value projection: ``v = W x + b + W td + b``. As one
    projection that is ``W (x + td) + 2 b``: returns ``(x + td, 2 b)`` to project (``(x, b)`` without
    a signal), so a top-down pass costs what a plain pass costs."""
    if td is None:
        return x, bias
    return x + td, None if bias is None else 2 * bias


class SignalRoute(NamedTuple):
    """Where one kind of top-down signal enters an attention (a row of ``SIGNAL_ROUTES``). A NamedTuple
    so that TorchScript reads it as a module attribute, as it reads ``TopDownMode``."""
    qk: bool    #: added to the input of the query and key projections (folded, see ``fold_value_signal``)
    v: bool     #: added to the input of the value projection (folded)
    mask: bool  #: a (B, N, 1) token mask that multiplies the value (``masked_value``)


#: The signal switch, the ``signal`` column of the mode table as data: ``value`` (AbSViT), ``qkv``
#: (AbSViT-QKV), ``mask`` (MaskAtt), ``none`` (a mode without a second pass: a signal is an error).
SIGNAL_ROUTES: Dict[str, SignalRoute] = {
    'value': SignalRoute(qk=False, v=True, mask=False),
    'qkv': SignalRoute(qk=True, v=True, mask=False),
    'mask': SignalRoute(qk=False, v=False, mask=True),
    'none': SignalRoute(qk=False, v=False, mask=False),
}
if set(SIGNAL_ROUTES) != set(SIGNALS):
    raise ImportError(f'SIGNAL_ROUTES {tuple(SIGNAL_ROUTES)} must cover the signals of the mode table {SIGNALS}')


class TopDownAttentionMixin:
    """The attention side of the top-down pass, once for every backbone: how an attention takes its
    block's signal and the recording of its softmax weights that ``TopDownMixin.inspect`` reads.

    A backbone's attention (an ``nn.Module``) lists this mixin before its base, calls
    ``init_signal(signal)`` after ``nn.Module.__init__`` and, in ``forward(x, td=None)``:

    1. ``project(x, td, weight, bias, value_from)`` for each of its q/k/v projections: the projection
       with the signal routed in (``SIGNAL_ROUTES``); rows from ``value_from`` on are value rows (the
       caller says where: under FX tracing a weight's shape cannot steer control flow);
    2. ``signal_value(v, td)`` on the value in heads layout (applies ``maskatt``'s token mask);
    3. ``attend(q, k, v, explicit)``: fused attention, or the explicit softmax when weights are being
       recorded or the backbone needs it (``explicit``); a backbone whose logits are not
       ``softmax(q k^T * scale)`` overrides ``attention_weights``.

    It needs the attributes ``scale`` and ``attn_drop`` (an ``nn.Dropout``). Projections are given as
    tensors, not modules: TorchScript cannot pass a module to a method.
    """
    # TorchScript reads the first annotations along the bases: these two type the attributes
    attn_weights: Optional[torch.Tensor]
    route: SignalRoute

    def init_signal(self, signal: str) -> None:
        """How this attention takes a signal (checked: a typo fails at construction); recording off."""
        self.signal = checked_signal(signal)
        self.route = SIGNAL_ROUTES[signal]
        self.record_weights = False
        self.attn_weights = None

    def project(self, x: torch.Tensor, td: Optional[torch.Tensor], weight: torch.Tensor,
                bias: Optional[torch.Tensor], value_from: Optional[int]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``x @ weight.T + bias`` with the signal ``td`` routed in; rows from ``value_from`` on are value
        rows (``None``: the projection has none, e.g. a separate query projection). Returns ``(out, None)``
        when every row sees the same input (one projection), else ``(rows before value_from, value rows)``,
        each with its own input: the two calls the release's split amounts to, no concatenation."""
        route = self.route
        if td is not None and not (route.qk or route.v or route.mask):
            raise ValueError(f"an attention with signal '{self.signal}' takes no top-down signal")
        into_qk = td is not None and route.qk
        into_v = td is not None and route.v
        if value_from is not None and into_qk != into_v:
            x1, b1 = fold_value_signal(x, td if into_qk else None, None if bias is None else bias[:value_from])
            x2, b2 = fold_value_signal(x, td if into_v else None, None if bias is None else bias[value_from:])
            return F.linear(x1, weight[:value_from], b1), F.linear(x2, weight[value_from:], b2)
        xs, bs = fold_value_signal(x, td if into_qk else None, bias)
        return F.linear(xs, weight, bs), None

    def signal_value(self, v: torch.Tensor, td: Optional[torch.Tensor]) -> torch.Tensor:
        """The value (B, heads, N, d), times the token mask where the signal is one."""
        if td is not None and self.route.mask:
            return masked_value(v, td)
        return v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, explicit: bool = False) -> torch.Tensor:
        """``softmax(logits) v`` of (B, heads, N, d) tensors: torch's fused kernel unless weights are
        recorded or ``explicit``; recording keeps the last weights in ``attn_weights``."""
        if not (explicit or self.record_weights):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.)
        attn = self.attention_weights(q, k)
        if self.record_weights:
            self.attn_weights = attn.detach()
        return self.attn_drop(attn) @ v

    def attention_weights(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The explicit path's softmax weights: ``softmax((q * scale) k^T)``."""
        return ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


@torch.fx.wrap
@register_notrace_function
def steering_prior(prior: Optional[torch.Tensor], classes: Optional[Union[int, List[int], torch.Tensor]],
                   prompt: Optional[torch.Tensor], prototypes: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The prior vector(s): an explicit ``prior`` ``(C,)``/``(B, C)``, the class prototypes (rows of the
    linear classifier's weight, ``prototypes``) of ``classes``, or the learned ``prompt``. A leaf for
    FX, so that a traced model takes the steering inputs at run time."""
    if prior is not None and classes is not None:
        raise ValueError('give either prior or classes, not both')
    if classes is None:
        return prompt if prior is None else prior
    if prototypes is None:
        raise ValueError('class-prototype priors need a linear classifier head')
    if isinstance(classes, torch.Tensor):
        idx = classes.to(device=prototypes.device, dtype=torch.long)
    elif isinstance(classes, int):
        idx = torch.tensor(classes, device=prototypes.device, dtype=torch.long)
    else:  # a sequence (TorchScript: List[int])
        idx = torch.tensor(classes, device=prototypes.device, dtype=torch.long)
    n = prototypes.shape[0]
    if idx.numel() > 0 and bool((idx.min() < 0) | (idx.max() >= n)):
        raise ValueError(f'class index out of range [0, {n}): {classes}')
    return prototypes[idx]


@torch.fx.wrap
@register_notrace_function
def required_prior(prior: Optional[torch.Tensor], td_mode: str) -> torch.Tensor:
    """``prior``, which a mode with a prior cannot do without. A leaf for FX: the check runs when a
    traced model runs (and the graph's value is typed ``Tensor``, which TorchScript needs)."""
    if prior is None:
        raise ValueError(f"td_mode '{td_mode}' needs a prior but the model has none")
    return prior


@torch.fx.wrap
@register_notrace_function
def steering_alpha(alpha: Optional[float], default: float) -> float:
    """``alpha``, or the model's default. A leaf for FX (the argument is a run-time input)."""
    return default if alpha is None else alpha


@torch.fx.wrap
@register_notrace_function
def refuse_aux_output(x: torch.Tensor, return_aux: bool) -> torch.Tensor:
    """In an FX-traced model: the graph computes the logits only, so it refuses ``return_aux=True``
    at run time (trace the eager model's ``forward_top_down`` for the training outputs)."""
    if return_aux:
        raise RuntimeError('this FX-traced model computes the logits only; return_aux=True needs the eager model')
    return x


def variational_loss(decoders: Sequence[TokenDecoder], block_inputs: Sequence[torch.Tensor],
                     block_outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_l mse(decoder_l.linear(sg(out_l)), sg(in_l))``: trains only the decoders (unweighted)."""
    if not (len(decoders) == len(block_inputs) == len(block_outputs)):
        raise ValueError(f'{len(decoders)} decoders for {len(block_inputs)} inputs / {len(block_outputs)} outputs')
    losses = [F.mse_loss(dec.linear(out.detach()), inp.detach())
              for dec, inp, out in zip(decoders, block_inputs, block_outputs)]
    return torch.stack(losses).sum()


def init_feedback_weights(*modules: nn.Module) -> None:
    """trunc_normal(std .02) on every Linear / ConvTranspose2d weight of the feedback path: the release
    initialises the decoders like every timm ViT linear."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, (nn.Linear, nn.ConvTranspose2d)):
                trunc_normal_(m.weight, std=.02)


class TopDownMixin:
    """Two-pass AbS orchestration shared by every top-down backbone.

    A backbone mixes this in before its base class, calls ``init_top_down`` in its constructor and
    provides:

    * ``forward_pass(x, td=None, collect=False, depth=None) -> PassOutput``: one pass, tokens after the
      final norm, channel-last. With ``td`` (one signal per block: a tensor to add, or a mask for
      ``maskatt``) it is the top-down pass; ``collect`` also returns every block's input and output;
      ``depth`` stops after that many blocks (``forward_intermediates(stop_early=True)``);
    * ``pass_intermediates(x, td, indices, norm, stop_early, output_fmt, **extra) -> (final, intermediates)``:
      timm's ``forward_intermediates`` of the one pass with signals ``td`` (``None``: bottom-up), which
      the plain backbone's own ``forward_intermediates`` also calls; ``extra`` are the backbone's own
      options (a ViT's ``return_prefix_tokens``, ``output_dict``: ``intermediates`` is then timm's dict);
    * ``forward_head(tokens, pre_logits=False)``;
    * where its defaults here do not fit: ``class_prototypes()`` (the ``nn.Linear`` classifier's weight
      rows) and ``tokens_to_map(tokens, img_hw)`` (channel-last maps), used by steering and ``inspect``;
    * optionally ``feedback_bridge(i, x)`` when decoders change resolution or width (see ``feedback``),
      and the class attribute ``TD_MODES`` when it supports only some modes.

    ``forward_features(x)`` is what ``forward_head`` turns into ``model(x)``'s logits (the top-down
    pass), as timm expects; the bottom-up pass is ``bottom_up(x)``.
    """
    is_top_down = True
    TD_MODES = TD_MODES
    # TorchScript types attributes from the first class annotations it finds along the bases, so this
    # one also stands in for the backbone's (timm ViT's ``dynamic_img_size: Final`` is then a plain bool)
    td_spec: TopDownMode  # lets TorchScript read the row's fields

    @classmethod
    def resolve_td_mode(cls, td_mode: str) -> TopDownMode:
        """The table row of ``td_mode``, checked against the modes this class supports."""
        return top_down_mode(td_mode, cls.TD_MODES, cls.__name__)

    def init_top_down(self, decoder_dims: Sequence[Union[int, Tuple[int, int]]], mode: TopDownMode,
                      alpha: float = 1.0, prior_dim: Optional[int] = None, bridges: Optional[Callable] = None,
                      device=None, dtype=None):
        """Create ``prompt`` and ``decoders`` (release names) as the mode needs them, then the
        backbone's extra feedback modules ``bridges(device=, dtype=)`` (returned), then initialise the
        feedback weights: the release's order, so seeded models draw the release's weights.

        ``decoder_dims`` has one entry per block: ``dim`` or ``(dim_out, dim_in)`` of that block.
        """
        self.td_mode, self.td_spec, self.alpha = mode.name, mode, float(alpha)
        self.reweighting = 'scale'  # see REWEIGHTINGS; set_reweighting changes it
        self.td_blocks = len(decoder_dims)  # one signal per block, also in modes without decoders
        dd = dict(device=device, dtype=dtype)
        top_dim = decoder_dims[-1] if isinstance(decoder_dims[-1], int) else decoder_dims[-1][0]
        prior_dim = top_dim if prior_dim is None else prior_dim
        # Modes that never use a part do not create it, so DDP sees no unused parameters.
        self.prompt = nn.Parameter(torch.randn(prior_dim, **dd)) if mode.prior else None
        self.decoders = nn.ModuleList(
            [TokenDecoder(*((d,) if isinstance(d, int) else d), **dd) for d in decoder_dims]
        ) if mode.decoders else None
        extra = bridges(**dd) if bridges is not None else None
        init_feedback_weights(*[m for m in (self.decoders, extra) if m is not None])
        return extra

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """The backbone's exemptions plus the prompt (a direction, like the class token)."""
        return set(super().no_weight_decay()) | ({'prompt'} if self.prompt is not None else set())

    @torch.jit.ignore
    def set_reweighting(self, transform: str) -> None:
        """Choose how the prior reweights the pass-1 tokens (``REWEIGHTINGS``): ``scale``, the paper's
        default, or ``rank1``, what the vision-language release computes."""
        if transform not in REWEIGHTINGS:
            raise ValueError(f'reweighting must be one of {REWEIGHTINGS}, got {transform!r}')
        self.reweighting = transform

    def num_td_blocks(self) -> int:
        """How many blocks take a top-down signal (every block of the backbone)."""
        return self.td_blocks

    def class_prototypes(self) -> Optional[torch.Tensor]:
        """The classifier's weight rows, the priors of ``classes`` (``None`` unless it is an ``nn.Linear``).

        TorchScript cannot call timm's ``get_classifier`` (it is ignored there) nor test a submodule's
        class, but it resolves ``hasattr`` when compiling: a scripted model reads timm's ``head``."""
        if torch.jit.is_scripting():
            if hasattr(self, 'head'):
                if hasattr(self.head, 'weight'):
                    return self.head.weight
            return None
        else:
            head = self.get_classifier()
            return head.weight if isinstance(head, nn.Linear) else None

    def tokens_to_map(self, tokens: torch.Tensor, img_hw) -> torch.Tensor:
        """Pass tokens to (B, C, h, w) maps for ``inspect``. This default is for backbones whose tokens
        are channel-last maps (B, h, w, C); token-sequence backbones override it."""
        return tokens.permute(0, 3, 1, 2)

    def feedback_bridge(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """From block ``i``'s input space to block ``i-1``'s output space (identity unless a backbone's
        stages change resolution or width)."""
        return x

    # -- the named steps -------------------------------------------------------------------------
    def resolve_prior(self, prior: Optional[torch.Tensor] = None,
                      classes: Optional[Union[int, List[int], torch.Tensor]] = None) -> Optional[torch.Tensor]:
        """The prior vector(s): an explicit ``prior`` ``(C,)``/``(B, C)``, the class prototypes of
        ``classes`` (rows of the classifier weight), or the learned ``prompt``."""
        return steering_prior(prior, classes, self.prompt, self.class_prototypes())

    def steering(self, prior: Optional[torch.Tensor] = None,
                 classes: Optional[Union[int, List[int], torch.Tensor]] = None,
                 alpha: Optional[float] = None) -> Tuple[Optional[torch.Tensor], float]:
        """The steering inputs of every call resolved: ``(prior, alpha)``."""
        return self.resolve_prior(prior, classes), steering_alpha(alpha, self.alpha)

    def bottom_up(self, x: torch.Tensor) -> torch.Tensor:
        """Pass 1: the plain forward's tokens (``forward_pass(x, collect=True)`` gives the blocks' too)."""
        return self.forward_pass(x).tokens

    def top_down_signals(self, tokens: torch.Tensor, prior: Optional[torch.Tensor],
                         alpha: float) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
        """From pass-1 tokens to the per-block signals of pass 2; returns ``(signals, mask)``."""
        if not self.td_spec.prior:
            return self.feedback(tokens), None
        prior = required_prior(prior, self.td_mode)
        if self.decoders is None:  # maskatt: the mask itself is every block's signal
            mask = prior_mask(tokens, prior)
            return [mask] * self.num_td_blocks(), mask
        weighted, mask = reweight(tokens, prior, alpha, self.reweighting)
        return self.feedback(weighted), mask

    def feedback(self, tokens: torch.Tensor) -> List[torch.Tensor]:
        """Walk the decoders from the top block down; returns the top-down signal of every block."""
        signals: List[torch.Tensor] = []
        if self.decoders is None:
            raise RuntimeError(f"td_mode '{self.td_mode}' has no decoders")
        else:
            x = tokens
            for i in range(len(self.decoders) - 1, -1, -1):
                x, td = self._decode(i, x)
                signals.append(td)
                if i > 0:
                    x = self.feedback_bridge(i, x)
            signals.reverse()
        return signals

    def _decode(self, i: int, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if torch.jit.is_scripting():
            decoder: DecoderInterface = self.decoders[i]
            return decoder.forward(x)
        return self.decoders[i](x)  # a module call, so that hooks see it

    def top_down(self, x: torch.Tensor, signals: List[torch.Tensor]) -> torch.Tensor:
        """Pass 2: the tokens of the blocks run again, each taking its signal."""
        return self.forward_pass(x, signals).tokens

    def signals_for(self, x: torch.Tensor, top_down: bool = True, prior: Optional[torch.Tensor] = None,
                    classes: Optional[Union[int, List[int], torch.Tensor]] = None, alpha: Optional[float] = None
                    ) -> Tuple[Optional[List[torch.Tensor]], Optional[torch.Tensor], float]:
        """What the pass a caller reports needs: ``(signals, prior, alpha)``. ``signals`` is ``None`` for
        the bottom-up pass (``top_down=False``) and in perceiver mode, whose only pass is pass 1; else
        pass 1 and the feedback run here and the signals are pass 2's."""
        prior, alpha = self.steering(prior, classes, alpha)
        if not top_down or not self.td_spec.second_pass:
            return None, prior, alpha
        signals, _ = self.top_down_signals(self.bottom_up(x), prior, alpha)
        return signals, prior, alpha

    def finish_features(self, tokens: torch.Tensor, top_down: bool, prior: Optional[torch.Tensor],
                        alpha: float) -> torch.Tensor:
        """The final features of the reported pass: perceiver mode's are its reweighted tokens."""
        if not top_down or self.td_spec.second_pass:
            return tokens
        return reweight(tokens, required_prior(prior, self.td_mode), alpha, self.reweighting)[0]

    def forward_features(self, x: torch.Tensor, prior: Optional[torch.Tensor] = None,
                         classes: Optional[Union[int, List[int], torch.Tensor]] = None,
                         alpha: Optional[float] = None) -> torch.Tensor:
        """What ``forward_head`` turns into ``model(x)``'s logits: the top-down pass's tokens (perceiver:
        the reweighted pass-1 tokens). Steering inputs as in ``forward``."""
        signals, prior, alpha = self.signals_for(x, True, prior, classes, alpha)
        tokens = self.bottom_up(x) if signals is None else self.top_down(x, signals)
        return self.finish_features(tokens, True, prior, alpha)

    def forward_top_down(self, x: torch.Tensor, prior: Optional[torch.Tensor] = None, classes=None,
                         alpha: Optional[float] = None, var_loss: bool = True,
                         phase: Optional[Callable[[str], None]] = None) -> TopDownOutput:
        """Both passes; the documented call for training and steering.

        Returns the final logits, each pass's logits and (with ``var_loss``) the variational loss.
        ``phase(name)`` (optional) is called as each phase ends, for profilers
        (``benchmarks/throughput.py --profile``).
        """
        done = phase if phase is not None else (lambda name: None)
        prior, alpha = self.steering(prior, classes, alpha)
        tokens = self.bottom_up(x)
        logits1 = self.forward_head(tokens)
        done('pass 1 (bottom-up)')
        if not self.td_spec.second_pass:
            weighted, mask = reweight(tokens, required_prior(prior, self.td_mode), alpha, self.reweighting)
            logits2 = self.forward_head(weighted)
            done('prior + head')
            return TopDownOutput(logits2, (logits1, logits2), None, mask)
        signals, mask = self.top_down_signals(tokens, prior, alpha)
        done('prior + feedback')
        tokens2, vloss = self.second_pass(x, signals, var_loss, phase)
        logits2 = self.forward_head(tokens2)
        return TopDownOutput(logits2, (logits1, logits2), vloss, mask)

    def second_pass(self, x: torch.Tensor, signals: List[torch.Tensor], var_loss: bool = False,
                    phase: Optional[Callable[[str], None]] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Pass 2's tokens and, with ``var_loss`` in a mode with decoders, the variational loss (else
        ``None``): the tail of ``forward_top_down``, public for callers that need pass 2's tokens rather
        than its logits (the vision-language encoder feeds every token to its fusion). The collecting
        pass keeps every block's input and output alive, so it runs only when the loss is asked for.
        ``phase`` as in ``forward_top_down``."""
        done = phase if phase is not None else (lambda name: None)
        if not (var_loss and self.decoders is not None):
            tokens = self.top_down(x, signals)
            done('pass 2 (top-down)')
            return tokens, None
        tokens, ins, outs = self.forward_pass(x, signals, collect=True)  # pass 2, with what the loss needs
        done('pass 2 (top-down)')
        vloss = variational_loss(self.decoders, ins, outs)
        done('variational loss')
        return tokens, vloss

    def forward(self, x: torch.Tensor, prior: Optional[torch.Tensor] = None,
                classes: Optional[Union[int, List[int], torch.Tensor]] = None, alpha: Optional[float] = None,
                return_aux: bool = False):
        """``model(x)`` gives the final logits (no variational-loss work); ``return_aux=True`` gives a
        ``TopDownOutput`` with both passes and the variational loss (what the training loss needs,
        and the call that DDP wraps). Steering: ``prior`` ``(C,)``/``(B, C)`` or ``classes`` (their
        prototypes), and ``alpha``. TorchScript and FX-traced models give the logits."""
        if not torch.jit.is_scripting():
            if isinstance(return_aux, torch.fx.Proxy):  # FX symbolic tracing: trace the logits
                x = refuse_aux_output(x, return_aux)
            elif return_aux:
                return self.forward_top_down(x, prior, classes, alpha)
        return self.forward_head(self.forward_features(x, prior, classes, alpha))

    @torch.jit.ignore
    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None, *,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = 'NCHW',
                              intermediates_only: bool = False, top_down: bool = True,
                              prior: Optional[torch.Tensor] = None, classes=None, alpha: Optional[float] = None,
                              **extra):
        """The backbone's timm ``forward_intermediates`` (same returns; options after ``indices`` by
        keyword, as the backbones order theirs differently) reporting the top-down pass, or the
        bottom-up one with ``top_down=False``; steering inputs as in ``forward``; ``extra``: the
        backbone's own options (see ``pass_intermediates``). Perceiver mode reports its only pass,
        with the reweighted tokens as final features, so the final features always equal
        ``forward_features(x)`` (top-down) or ``bottom_up(x)``; with ``stop_early`` the pass ends below
        the top, where the prior never acts, so perceiver's final features are that point's tokens
        (a multi-stage backbone's are narrower than the prior)."""
        signals, prior, alpha = self.signals_for(x, top_down, prior, classes, alpha)
        final, inter = self.pass_intermediates(x, signals, indices, norm, stop_early, output_fmt, **extra)
        if intermediates_only:
            return inter
        if not stop_early:
            final = self.finish_features(final, top_down, prior, alpha)
        return {**inter, 'image_features': final} if isinstance(inter, dict) else (final, inter)

    @torch.jit.ignore
    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """timm's feature-extraction pruning. A top-down model keeps every block, decoder and its final
        norm whatever the indices: pass 1 runs to the end and its normed tokens make the prior's mask
        and the feedback of every block. So only the classifier goes (``prune_head``); ``prune_norm``
        is not honoured. Returns the absolute indices taken."""
        take_indices, _ = feature_take_indices(len(self.feature_info), indices)
        if prune_head:
            if hasattr(self, 'fc_norm'):
                self.fc_norm = nn.Identity()
            self.reset_classifier(0, '')
        return take_indices

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
        prior, alpha = self.steering(prior, classes, alpha)
        to_map = lambda t: self.tokens_to_map(t, x.shape[-2:])  # noqa: E731

        with self.recording_attention(attn_weights) as attn1:
            tokens, _, outs1 = self.forward_pass(x, collect=True)
        result = {'logits_bottom_up': self.forward_head(tokens),
                  'bottom_up': to_map(outs1[depth - 1]).norm(dim=1), 'attn_bottom_up': attn1}
        if not self.td_spec.second_pass:
            weighted, mask = reweight(tokens, prior, alpha, self.reweighting)
            result.update(logits=self.forward_head(weighted), top_down=None, attn_top_down=None, features={},
                          prior_mask=to_map(mask)[:, 0])
            return result
        signals, mask = self.top_down_signals(tokens, prior, alpha)
        with self.recording_attention(attn_weights) as attn2:
            tokens2, _, outs2 = self.forward_pass(x, signals, collect=True)
        result.update(logits=self.forward_head(tokens2), top_down=to_map(outs2[depth - 1]).norm(dim=1),
                      attn_top_down=attn2, prior_mask=None if mask is None else to_map(mask)[:, 0],
                      features={i: to_map(outs2[i]) for i in feature_blocks})
        return result

    @contextmanager
    def recording_attention(self, enabled: bool = True):
        """Within the context, attentions keep their softmax weights; yields the list they fill."""
        found: List[torch.Tensor] = []
        modules = [m for m in self.modules() if isinstance(m, TopDownAttentionMixin)] if enabled else []
        for m in modules:
            m.record_weights = True
        try:
            yield found
        finally:
            for m in modules:
                m.record_weights = False
                found.append(m.attn_weights)
                m.attn_weights = None
