"""METER's cross-modal fusion: co-attention layers built from transformers' own BERT layers.

A METER co-attention layer is post-LN self-attention -> cross-attention to the other modality -> FFN,
which is exactly transformers' ``BertLayer`` with ``add_cross_attention``. Two details of that class
decide whether it is the right layer, and both are handled here (and tested against a plain
computation in ``tests/test_vl_model.py``):

* ``add_cross_attention`` requires ``is_decoder``, which makes the self-attention *causal* (the
  ``sdpa`` kernel applies ``is_causal`` when no mask is given): METER's self-attention is
  bidirectional, so every layer's self-attention is switched back to ``is_causal = False``;
* from transformers 5 a layer returns a tensor, before it a tuple whose first element is the
  tensor. Indexing the tensor with ``[0]`` would silently keep sample 0 of the batch, so the output
  is unpacked by type.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertLayer

__all__ = ['co_attention_config', 'co_attention_layer', 'additive_mask', 'CoAttentionFusion', 'FirstTokenPooler']


def co_attention_config(hidden_size: int = 768, num_heads: int = 12, ffn_size: int = 3072, dropout: float = 0.1,
                        layer_norm_eps: float = 1e-12) -> BertConfig:
    """The BERT config of one METER co-attention layer (METER-B: 768 wide, 12 heads, FFN 3072)."""
    return BertConfig(hidden_size=hidden_size, num_attention_heads=num_heads, intermediate_size=ffn_size,
                      hidden_act='gelu', hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                      layer_norm_eps=layer_norm_eps, is_decoder=True, add_cross_attention=True,
                      attn_implementation='sdpa')


def co_attention_layer(config: BertConfig) -> BertLayer:
    """A ``BertLayer`` with cross-attention and a bidirectional self-attention (see the module doc)."""
    layer = BertLayer(config)
    layer.attention.self.is_causal = False
    return layer


def additive_mask(mask: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    """(B, L) 1/0 key mask -> (B, 1, 1, L) additive mask (0 where attended, the dtype's minimum elsewhere)."""
    if mask is None:
        return None
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def _hidden(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out  # transformers < 5 returned (hidden, ...)


class CoAttentionFusion(nn.Module):
    """``depth`` text-side and ``depth`` image-side co-attention layers, run in lock step: at each
    depth both sides attend to the other side's input of that depth (METER's layout)."""

    def __init__(self, config: BertConfig, depth: int = 6):
        super().__init__()
        self.text_layers = nn.ModuleList([co_attention_layer(config) for _ in range(depth)])
        self.image_layers = nn.ModuleList([co_attention_layer(config) for _ in range(depth)])

    def forward(self, text: torch.Tensor, image: torch.Tensor, text_mask: Optional[torch.Tensor] = None,
                image_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``text`` (B, L, H), ``image`` (B, N, H), 1/0 key masks (B, L) / (B, N) (``None``: all valid)."""
        t_mask, i_mask = additive_mask(text_mask, text.dtype), additive_mask(image_mask, image.dtype)
        x, y = text, image
        for text_layer, image_layer in zip(self.text_layers, self.image_layers):
            x1 = _hidden(text_layer(x, attention_mask=t_mask, encoder_hidden_states=y, encoder_attention_mask=i_mask))
            y1 = _hidden(image_layer(y, attention_mask=i_mask, encoder_hidden_states=x, encoder_attention_mask=t_mask))
            x, y = x1, y1
        return x, y


class FirstTokenPooler(nn.Module):
    """METER's pooler: the first token through Linear + tanh."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(tokens[:, 0]))
