"""IDA: interventional dual attention for multi-label recognition, as a head on any timm backbone.

The head (``InterventionalClassifier``) takes a dense feature map (B, C, H, W) and

1. splits the C channels into ``num_head`` groups; per group a bias-free 1x1 class attention whose
   weights are divided by ``||w_c|| + beta`` (beta = 1/32), a softmax over positions, and the
   attention-weighted class features (B, K, C / heads);
2. stacks them to (B, K, C / heads, heads) and *views* them as (B * K, heads, C / heads): a token
   sequence of length ``heads`` per class (see ``_class_tokens`` for the channel interleaving this
   implies, which the release does and this module reproduces);
3. runs 2 post-norm attention layers with a ReLU FFN (``heavy``) or 1 attention layer without FFN
   (``light``) over each sequence, then (heavy) an output projection C -> C;
4. scores class k as the dot product of its C features with the concatenated normalised class
   weights of step 1 (no bias).

Parameter names are those of the release (``clf.head.{i}``, ``clf.att_layers.layers.{j}.att.q_proj``,
...) so that its checkpoints load; ``remap_release_state_dict`` also renames its torchvision
ResNet-101 backbone keys (``backbone.resnet_layer.{n}``). Registered models: ``ida_{heavy,light}_*``
(``timm.list_models('ida_*')``); ``create_ida(backbone, ...)`` puts the head on any timm backbone that has
``features_only`` (ResNet, Swin, ViT, AbSViT, DAT, ...).
"""
import copy
from typing import Any, Dict, Optional

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model

from errors import UserError

__all__ = ['InterventionalClassifier', 'IDA', 'create_ida', 'remap_release_state_dict', 'IDA_BACKBONES']

#: ImageNet statistics (the release normalises with them) at the release's 448 px square input.
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ClassTokenAttention(nn.Module):
    """Single-head scaled dot-product attention over the ``heads`` tokens of one class (release: ``attention``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.scale = dim ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q_proj(x) * self.scale, self.k_proj(x), self.v_proj(x)
        attn = torch.softmax(q @ k.transpose(1, 2), dim=-1)
        return self.out_proj(attn @ v)


class AttentionLayer(nn.Module):
    """Attention + residual; with ``ffn``: post-norm, ReLU FFN (the release fixes its width at 2048), residual,
    post-norm (release: ``attention_layer``)."""

    def __init__(self, dim: int, ffn: bool = True, dim_feedforward: int = 2048):
        super().__init__()
        self.att = ClassTokenAttention(dim)
        self.ffn = ffn
        if ffn:
            self.linear1, self.linear2 = nn.Linear(dim, dim_feedforward), nn.Linear(dim_feedforward, dim)
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.att(x)
        if self.ffn:
            x = self.norm1(x)
            x = self.norm2(x + self.linear2(F.relu(self.linear1(x))))
        return x


class AttentionLayers(nn.Module):
    """A stack of identical ``AttentionLayer``s (a module of its own so that the keys read ``att_layers.layers.j``)."""

    def __init__(self, layer: nn.Module, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class InterventionalClassifier(nn.Module):
    """The IDA head (release: ``Interventional_Classifier``); see the module docstring.

    ``release_view=True`` reproduces the release's (B, K, C/heads, heads) -> (B*K, heads, C/heads) *view*;
    ``False`` permutes instead, so that token i is exactly channel group i.
    """

    def __init__(self, num_classes: int = 80, feat_dim: int = 2048, num_head: int = 4, beta: float = 1 / 32,
                 heavy: bool = True, dim_feedforward: int = 2048, release_view: bool = True):
        super().__init__()
        if feat_dim % num_head:
            raise UserError(f'IDA: the {feat_dim} feature channels do not split into num_head={num_head} groups')
        self.num_classes, self.num_head, self.head_dim = num_classes, num_head, feat_dim // num_head
        self.feat_dim, self.beta, self.heavy, self.release_view = feat_dim, beta, heavy, release_view
        self.head = nn.ModuleList(nn.Conv2d(self.head_dim, num_classes, 1, bias=False) for _ in range(num_head))
        layer = AttentionLayer(self.head_dim, ffn=heavy, dim_feedforward=dim_feedforward)
        self.att_layers = AttentionLayers(layer, 2 if heavy else 1)
        self.out_proj = nn.Linear(feat_dim, feat_dim) if heavy else None

    def normed_weights(self) -> torch.Tensor:
        """(heads, K, C/heads): every group's class weights divided by ``||w_c|| + beta``; used both for the
        class attention and the final scores, so that no class wins by the size of its weight vector."""
        w = torch.stack([h.weight.flatten(1) for h in self.head])
        return w / (w.norm(dim=2, keepdim=True) + self.beta)

    def class_attention(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, heads, K, H*W): per group, each class's softmax over positions (the maps drawn in the demos)."""
        groups = feats.flatten(2).split(self.head_dim, dim=1)        # heads x (B, C/heads, HW)
        w = self.normed_weights()
        return torch.stack([torch.softmax(torch.einsum('kc,bcn->bkn', w[i], g), dim=-1)
                            for i, g in enumerate(groups)], dim=1)

    def _class_tokens(self, feats: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """(B*K, heads, C/heads) token sequences from the attention-weighted class features."""
        b = feats.shape[0]
        groups = feats.flatten(2).split(self.head_dim, dim=1)
        y = torch.stack([attn[:, i] @ g.transpose(1, 2) for i, g in enumerate(groups)], dim=-1)  # (B, K, C/h, h)
        if self.release_view:
            # The release views (B, K, C/heads, heads) as (B*K, heads, C/heads) without permuting: token j then
            # holds channels j*C/heads .. of the *flattened* (C/heads, heads) grid, i.e. interleaved entries of
            # every group. Kept so that release checkpoints give the release's logits.
            return y.contiguous().view(b * self.num_classes, self.num_head, self.head_dim)
        return y.permute(0, 1, 3, 2).reshape(b * self.num_classes, self.num_head, self.head_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        b = feats.shape[0]
        tokens = self.att_layers(self._class_tokens(feats, self.class_attention(feats)))
        out = tokens.reshape(b, self.num_classes, self.feat_dim)
        if self.out_proj is not None:
            out = self.out_proj(out)
        w = self.normed_weights().permute(1, 0, 2).reshape(self.num_classes, self.feat_dim)  # (K, C), groups in a row
        return (out * w).sum(-1)


class IDA(nn.Module):
    """A timm ``features_only`` backbone (its last feature map, NCHW) and the IDA head ``clf``."""

    def __init__(self, backbone: nn.Module, num_classes: int = 80, num_head: int = 4, heavy: bool = True,
                 beta: float = 1 / 32, release_view: bool = True):
        super().__init__()
        self.backbone = backbone
        self.num_features = backbone.feature_info.channels()[-1]
        # timm's Swin (and other channels-last models) give NHWC maps; the head wants NCHW
        self.channels_last = str(getattr(backbone, 'output_fmt', 'NCHW')).endswith('NHWC')
        self.num_classes = num_classes
        self.clf = InterventionalClassifier(num_classes, self.num_features, num_head, beta, heavy,
                                            release_view=release_view)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map, (B, C, h, w)."""
        feats = self.backbone(x)[-1]
        return feats.permute(0, 3, 1, 2) if self.channels_last else feats

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.clf(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def class_attention(self, x: torch.Tensor) -> torch.Tensor:
        """(B, heads, K, h, w) class attention maps of the images ``x`` on the backbone's feature grid."""
        feats = self.forward_features(x)
        return self.clf.class_attention(feats).unflatten(-1, feats.shape[-2:])

    def get_classifier(self) -> nn.Module:
        return self.clf

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if hasattr(self.backbone, 'set_grad_checkpointing'):
            self.backbone.set_grad_checkpointing(enable)


def _features_backbone(name: str, pretrained: bool, kwargs: Dict[str, Any]) -> nn.Module:
    """The last feature map of timm model ``name``. ``img_size`` goes only to backbones that take it: a
    transformer needs it for its position embedding, a convnet takes any size and refuses the argument."""
    try:
        return timm.create_model(name, pretrained=pretrained, features_only=True, out_indices=(-1,), **kwargs)
    except TypeError as e:
        if 'img_size' not in kwargs or 'img_size' not in str(e):
            raise
        kwargs = {k: v for k, v in kwargs.items() if k != 'img_size'}
        return timm.create_model(name, pretrained=pretrained, features_only=True, out_indices=(-1,), **kwargs)


def create_ida(backbone: str, pretrained: bool = False, num_classes: int = 80, heavy: bool = True,
               num_head: int = 4, beta: float = 1 / 32, release_view: bool = True, input_size: int = 448,
               **backbone_kwargs) -> IDA:
    """IDA on the timm model ``backbone`` (``pretrained``: the backbone's ImageNet weights, as the release
    starts from). ``backbone_kwargs`` (drop_path_rate, img_size, in_chans, ...) go to the backbone."""
    backbone_kwargs.pop('drop_rate', None)  # the release has no dropout; timm's feature wrappers drop the classifier
    backbone_kwargs.setdefault('img_size', input_size)
    model = IDA(_features_backbone(backbone, pretrained, backbone_kwargs), num_classes, num_head, heavy, beta,
                release_view)
    size = int(backbone_kwargs.get('img_size') or input_size)
    base = dict(getattr(model.backbone, 'pretrained_cfg', None) or {})
    chans = int(backbone_kwargs.get('in_chans') or base.get('input_size', (3,))[0])
    mean, std = base.get('mean', _IMAGENET_MEAN), base.get('std', _IMAGENET_STD)
    if len(mean) != chans:  # the backbone's statistics are for another channel count: neutral ones
        mean, std = (0.5,) * chans, (0.5,) * chans
    model.pretrained_cfg = model.default_cfg = dict(  # the release: square resize, no crop, ImageNet statistics
        architecture=f'ida_{"heavy" if heavy else "light"}_{backbone}', input_size=(chans, size, size),
        mean=tuple(mean), std=tuple(std), crop_pct=1.0, interpolation='bilinear', num_classes=num_classes,
        classifier='clf')
    return model


def remap_release_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename a release checkpoint's keys to this module's: ``module.`` dropped, and the torchvision ResNet
    packed as ``backbone.resnet_layer.{0,1,4,5,6,7}`` -> timm's ``backbone.{conv1,bn1,layer1..layer4}``
    (the ``clf.*`` keys are already the same)."""
    names = {'0': 'conv1', '1': 'bn1', '4': 'layer1', '5': 'layer2', '6': 'layer3', '7': 'layer4'}
    out = {}
    for key, value in state_dict.items():
        key = key[len('module.'):] if key.startswith('module.') else key
        if key.startswith('backbone.resnet_layer.'):
            idx, rest = key[len('backbone.resnet_layer.'):].split('.', 1)
            key = f'backbone.{names[idx]}.{rest}'
        out[key] = value
    return out


#: Registered ``ida_{heavy,light}_<suffix>``: suffix -> (timm backbone, num_head, input size). 4 groups of
#: 512 channels on ResNet-101 (the release); test_resnet (timm's 0.37M-parameter ResNet) and absvit_micro_patch8_64
#: (AbSViT-micro with 8 px patches at 64 px: 64 tokens) are for the offline Fashion-MNIST canvases
#: (``--data-set FMNIST_ML``). An optional 4th entry holds backbone arguments; any other backbone: ``create_ida``.
IDA_BACKBONES: Dict[str, tuple] = {
    'resnet101': ('resnet101', 4, 448),
    'swin_base_patch4_window12_384': ('swin_base_patch4_window12_384', 4, 384),
    'swin_large_patch4_window12_384': ('swin_large_patch4_window12_384', 4, 384),
    'test_resnet': ('test_resnet', 4, 64),
    'absvit_small_patch16_224': ('absvit_small_patch16_224', 4, 448),
    'absvit_micro_patch8_64': ('absvit_micro_patch4_28_gap', 4, 64, {'patch_size': 8}),
}


def _register(suffix: str, heavy: bool) -> None:
    backbone, num_head, size, *extra = IDA_BACKBONES[suffix]
    name = f'ida_{"heavy" if heavy else "light"}_{suffix}'

    def entrypoint(pretrained: bool = False, **kwargs) -> IDA:
        kwargs = {**(extra[0] if extra else {}), **kwargs}
        kwargs.setdefault('num_head', num_head)
        kwargs.setdefault('input_size', size)
        return create_ida(backbone, pretrained=pretrained, heavy=heavy, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = f'IDA ({"heavy" if heavy else "light"} head) on timm\'s {backbone}, {num_head} groups.'
    entrypoint.__module__ = __name__
    register_model(entrypoint)


for _suffix in IDA_BACKBONES:
    for _heavy in (True, False):
        _register(_suffix, _heavy)
