"""A straightforward reference implementation of AbSViT, written the way the reference release
computes it; the speed targets of ``docs/performance.md`` are measured against it.

What makes it "naive" (each is what the release does, and what ``models.AbSViT`` avoids):

* the top-down tokens go through the attention's **full** qkv projection and only the v slice is
  used: ``v = W_v x + b_v + W_v td + b_v`` (three D x D products per token where one would do);
* attention is written out: ``softmax(q k^T * scale) @ v`` (no fused kernel);
* **every** forward (inference too) recomputes the variational loss, and with the decoder's full
  forward (``linear`` and the unused ``linear2``).

It is self-contained apart from timm's ``PatchEmbed`` and ``Mlp`` (same parameter names), so it doubles as
an independent check of the project's model: it loads the same state_dict (identical keys and
shapes: timm ViT keys + ``prompt`` + ``decoders.{i}.linear/linear2.weight``) and gives the same
logits, pass logits and variational loss (``tests/test_fast_paths.py``).

    naive = naive_like(model)          # same config, same weights, as a NaiveAbSViT
    out = naive(x, return_aux=True)    # models.TopDownOutput: logits, pass_logits, var_loss
"""
from functools import partial
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp, PatchEmbed, trunc_normal_

from models import TopDownOutput

__all__ = ['NaiveAbSViT', 'naive_like', 'naive_config']


class NaiveAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, td: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if td is not None:  # full qkv of the top-down tokens; only v is used
            qkv_td = self.qkv(td).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
            v = v + qkv_td[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class NaiveBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4., qkv_bias: bool = True, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = NaiveAttention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, td: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), td)
        return x + self.mlp(self.norm2(x))


class NaiveDecoder(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim, bias=False)
        self.linear2 = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.linear(x)
        return x, self.linear2(x)


class NaiveAbSViT(nn.Module):
    """AbSViT as the release writes it (classification, ``td_mode='abs'``, no dropout / drop path).

    ``global_pool``: ``'token'`` (class token, final ``norm``) or ``'avg'`` (mean of the patch tokens,
    ``fc_norm`` after pooling, no final norm), as timm's ViT.
    """
    is_top_down = True

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = 'token', embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4., qkv_bias: bool = True, alpha: float = 1.0):
        super().__init__()
        if global_pool not in ('token', 'avg'):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.global_pool = global_pool
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.alpha = alpha
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, self.patch_embed.num_patches + 1, embed_dim) * .02)
        self.blocks = nn.Sequential(*[NaiveBlock(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth)])
        self.norm = norm(embed_dim) if global_pool == 'token' else nn.Identity()
        self.fc_norm = norm(embed_dim) if global_pool == 'avg' else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.decoders = nn.ModuleList([NaiveDecoder(embed_dim) for _ in range(depth)])
        self.prompt = nn.Parameter(torch.randn(embed_dim))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # the same phase methods as models.AbSViT, so the profile breakdown can time both alike
    def forward_features(self, x: torch.Tensor, td: Optional[List[torch.Tensor]] = None):
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        ins, outs = [], []
        for i, blk in enumerate(self.blocks):
            ins.append(x)
            x = blk(x, None if td is None else td[i])
            outs.append(x)
        return self.norm(x), ins, outs

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, self.num_prefix_tokens:].mean(dim=1) if self.global_pool == 'avg' else x[:, 0]
        return self.head(self.fc_norm(x))

    def feedback(self, x: torch.Tensor) -> List[torch.Tensor]:
        td: List[torch.Tensor] = []
        for i in range(len(self.decoders) - 1, -1, -1):
            x, out = self.decoders[i](x)
            td = [out] + td
        return td

    def var_loss(self, ins: List[torch.Tensor], outs: List[torch.Tensor]) -> torch.Tensor:
        losses = []
        for i in range(len(self.decoders) - 1, -1, -1):
            recon, _ = self.decoders[i](outs[i].detach())
            losses.append(F.mse_loss(recon, ins[i].detach()))
        return sum(losses)

    def reweight(self, x: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(x, dim=-1) @ F.normalize(self.prompt[None, ..., None], dim=1)
        return x * cos.clamp(0, 1) * self.alpha

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        tokens, _, _ = self.forward_features(x)
        logits1 = self.forward_head(tokens)
        td = self.feedback(self.reweight(tokens))
        tokens2, ins, outs = self.forward_features(x, td)
        logits2 = self.forward_head(tokens2)
        var_loss = self.var_loss(ins, outs)  # every forward, as the release does
        if return_aux:
            return TopDownOutput(logits2, (logits1, logits2), var_loss)
        return logits2


def naive_config(model: nn.Module) -> dict:
    """The ``NaiveAbSViT`` constructor arguments that reproduce an ``models.AbSViT`` (abs mode)."""
    if getattr(model, 'td_mode', 'abs') != 'abs':
        raise ValueError(f"the naive reference implements td_mode='abs' only, got {model.td_mode!r}")
    pe = model.patch_embed
    blk = model.blocks[0]
    dim = model.embed_dim
    if getattr(model, 'num_prefix_tokens', 1) != 1 or model.cls_token is None:
        raise ValueError('the naive reference needs exactly one class token')
    return dict(img_size=pe.img_size[0], patch_size=pe.patch_size[0], in_chans=pe.proj.in_channels,
                num_classes=model.num_classes, global_pool=model.global_pool, embed_dim=dim,
                depth=len(model.blocks), num_heads=blk.attn.num_heads,
                mlp_ratio=blk.mlp.fc1.out_features / dim, qkv_bias=blk.attn.qkv.bias is not None,
                alpha=getattr(model, 'alpha', 1.0))


def naive_like(model: nn.Module, load_weights: bool = True) -> NaiveAbSViT:
    """A ``NaiveAbSViT`` of ``model``'s configuration, on its device, with its weights (strict)."""
    device = next(model.parameters()).device
    with torch.device(device):
        naive = NaiveAbSViT(**naive_config(model))
    if load_weights and device.type != 'meta':
        naive.load_state_dict(model.state_dict(), strict=True)
    naive.pretrained_cfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    return naive.train(model.training)
