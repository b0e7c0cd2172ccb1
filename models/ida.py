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
(``timm.list_models('ida_*')``, each with a pretrained cfg without weights, built through timm's
``build_model_with_cfg``); ``create_ida(backbone, ...)`` puts the head on any timm backbone that has
``features_only`` (ResNet, Swin, ViT, AbSViT, DAT, ...). ``IDA`` has timm's model API (``num_features``,
``head_hidden_size``, ``forward_head(pre_logits=)``, ``reset_classifier``, ``forward_intermediates``,
``features_only``, device/dtype); timm's own model tests run on it (``tests/test_timm_suite.py``).
"""
import copy
from typing import Any, Dict, List, Optional, Tuple, Union

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._builder import pretrained_cfg_for_features, resolve_pretrained_cfg
from timm.models._features import feature_take_indices

from errors import UserError

from .backbone import recorded_cfgs

__all__ = ['InterventionalClassifier', 'IDA', 'create_ida', 'remap_release_state_dict', 'IDA_BACKBONES']

#: ImageNet statistics (the release normalises with them) at the release's 448 px square input.
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ClassTokenAttention(nn.Module):
    """Single-head scaled dot-product attention over the ``heads`` tokens of one class (release: ``attention``)."""

    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.q_proj, self.k_proj = nn.Linear(dim, dim, **dd), nn.Linear(dim, dim, **dd)
        self.v_proj, self.out_proj = nn.Linear(dim, dim, **dd), nn.Linear(dim, dim, **dd)
        self.scale = dim ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q_proj(x) * self.scale, self.k_proj(x), self.v_proj(x)
        attn = torch.softmax(q @ k.transpose(1, 2), dim=-1)
        return self.out_proj(attn @ v)


class AttentionLayer(nn.Module):
    """Attention + residual; with ``ffn``: post-norm, ReLU FFN (the release fixes its width at 2048), residual,
    post-norm (release: ``attention_layer``). ``ffn`` is a TorchScript constant: the light layer has no FFN
    modules, so its branch must not be compiled."""
    ffn: torch.jit.Final[bool]

    def __init__(self, dim: int, ffn: bool = True, dim_feedforward: int = 2048, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.att = ClassTokenAttention(dim, **dd)
        self.ffn = ffn
        if ffn:
            self.linear1, self.linear2 = nn.Linear(dim, dim_feedforward, **dd), nn.Linear(dim_feedforward, dim, **dd)
            self.norm1, self.norm2 = nn.LayerNorm(dim, **dd), nn.LayerNorm(dim, **dd)

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
    ``False`` permutes instead, so that token i is exactly channel group i. The groups are computed batched
    (one einsum over all of them, not a Python loop over a split), so that FX can trace the head.
    """

    def __init__(self, num_classes: int = 80, feat_dim: int = 2048, num_head: int = 4, beta: float = 1 / 32,
                 heavy: bool = True, dim_feedforward: int = 2048, release_view: bool = True, device=None, dtype=None):
        super().__init__()
        if feat_dim % num_head:
            raise UserError(f'IDA: the {feat_dim} feature channels do not split into num_head={num_head} groups')
        if num_classes < 1:
            raise UserError(f'IDA: the head needs at least one class (num_classes={num_classes})')
        dd = dict(device=device, dtype=dtype)
        self.num_classes, self.num_head, self.head_dim = num_classes, num_head, feat_dim // num_head
        self.feat_dim, self.beta, self.heavy, self.release_view = feat_dim, beta, heavy, release_view
        self.head = self._class_weights(num_classes, **dd)
        layer = AttentionLayer(self.head_dim, ffn=heavy, dim_feedforward=dim_feedforward, **dd)
        self.att_layers = AttentionLayers(layer, 2 if heavy else 1)
        self.out_proj = nn.Linear(feat_dim, feat_dim, **dd) if heavy else None

    def _class_weights(self, num_classes: int, device=None, dtype=None) -> nn.ModuleList:
        """Per group, the bias-free 1x1 class convolution: the only class-count-dependent parameters."""
        return nn.ModuleList(nn.Conv2d(self.head_dim, num_classes, 1, bias=False, device=device, dtype=dtype)
                             for _ in range(self.num_head))

    def reset(self, num_classes: int) -> None:
        """New class weights for ``num_classes`` classes (on the old ones' device/dtype); the attention layers
        and output projection act on per-class tokens whatever the class count, so they (and what they
        learnt) stay, as timm keeps the layers before a classifier it replaces."""
        if num_classes < 1:
            raise UserError(f'IDA: the head needs at least one class (num_classes={num_classes})')
        w = self.head[0].weight
        self.head = self._class_weights(num_classes, device=w.device, dtype=w.dtype).train(self.training)
        self.num_classes = num_classes

    def normed_weights(self) -> torch.Tensor:
        """(heads, K, C/heads): every group's class weights divided by ``||w_c|| + beta``; used both for the
        class attention and the final scores, so that no class wins by the size of its weight vector."""
        ws: List[torch.Tensor] = []
        for h in self.head:
            ws.append(h.weight.flatten(1))
        w = torch.stack(ws)
        return w / (w.norm(p=2, dim=2, keepdim=True) + self.beta)

    def _groups(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, heads, C/heads, H*W): the feature map's channel groups."""
        return feats.flatten(2).unflatten(1, (self.num_head, self.head_dim))

    def class_attention(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, heads, K, H*W): per group, each class's softmax over positions (the maps drawn in the demos)."""
        return torch.softmax(torch.einsum('hkc,bhcn->bhkn', self.normed_weights(), self._groups(feats)), dim=-1)

    def _class_tokens(self, feats: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """(B*K, heads, C/heads) token sequences from the attention-weighted class features."""
        b = feats.shape[0]
        y = torch.einsum('bhkn,bhcn->bkch', attn, self._groups(feats))  # (B, K, C/heads, heads)
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
    """A timm ``features_only`` backbone and the IDA head ``clf`` on its last feature map (NCHW).

    The timm model API: ``forward_features`` is that map (B, num_features, h, w); ``forward_head`` the
    head's logits. *Pre-logits* (``forward_head(x, pre_logits=True)``, and the output after
    ``reset_classifier(0)`` or with ``num_classes=0``) is the map's global pool (``global_pool``, 'avg';
    '' keeps the map): IDA has no class-independent feature vector of its own, since its class attention
    and attention layers work on one token sequence per class, so without classes what remains is the
    backbone's pooled map, as for a timm convnet. ``forward_intermediates`` gives the backbone's levels.
    """

    def __init__(self, backbone: nn.Module, num_classes: int = 80, num_head: int = 4, heavy: bool = True,
                 beta: float = 1 / 32, release_view: bool = True, global_pool: str = 'avg',
                 in_chans: Optional[int] = None, device=None, dtype=None):
        super().__init__()
        self.backbone = backbone
        self.num_features = backbone.feature_info.channels()[-1]
        self.in_chans = int(in_chans or getattr(backbone, 'in_chans', 3))
        # timm's Swin (and other channels-last models) give NHWC maps; the head wants NCHW
        self.channels_last = str(getattr(backbone, 'output_fmt', 'NCHW')).endswith('NHWC')
        self.feature_info = self._feature_info()
        self._head_args = dict(num_head=num_head, beta=beta, heavy=heavy, release_view=release_view)
        self._set_pool(global_pool)
        self.num_classes = num_classes
        self.clf = self._new_head(num_classes, device, dtype)

    def resolve_name(self, name: str) -> str:
        """Backbone module ``name`` as it is named in this model: timm's feature wrappers keep the backbone
        under ``model`` (getter) or rename ``a.b`` to ``a_b`` (list)."""
        names = {n for n, _ in self.named_modules()}
        cands = [f'backbone.{name}', f'backbone.model.{name}', f'backbone.{name.replace(".", "_", 1)}']
        return next((c for c in cands if c in names), cands[0])

    def _feature_info(self) -> List[Dict[str, Any]]:
        """The backbone's levels, their ``module`` named as it resolves in this model."""
        return [dict(fi, module=self.resolve_name(fi['module'])) for fi in self.backbone.feature_info.get_dicts()]

    def _set_pool(self, global_pool: str) -> None:
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()

    def _new_head(self, num_classes: int, device=None, dtype=None) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        return InterventionalClassifier(num_classes, self.num_features, device=device, dtype=dtype,
                                        **self._head_args)

    def _nchw(self, feats: torch.Tensor) -> torch.Tensor:
        return feats.permute(0, 3, 1, 2) if self.channels_last else feats

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map, (B, C, h, w)."""
        return self._nchw(self.backbone(x)[-1])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits (B, K) of the feature map ``x``; with ``pre_logits`` or no classes, its global pool."""
        if pre_logits or self.num_classes == 0:
            return self.global_pool(x)
        return self.clf(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              output_fmt: str = 'NCHW', intermediates_only: bool = False
                              ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The backbone's feature levels (``indices``: timm's convention, default all) in ``output_fmt``,
        and ``forward_features(x)``. The backbone is already a feature wrapper, so this is one pass of it."""
        if output_fmt not in ('NCHW', 'NHWC'):
            raise UserError(f'IDA: output_fmt must be NCHW or NHWC, not {output_fmt!r}')
        maps = [self._nchw(m) for m in self.backbone(x)]
        take, _ = feature_take_indices(len(maps), indices)
        inter = [maps[i] if output_fmt == 'NCHW' else maps[i].permute(0, 2, 3, 1) for i in take]
        return inter if intermediates_only else (maps[-1], inter)

    def class_attention(self, x: torch.Tensor) -> torch.Tensor:
        """(B, heads, K, h, w) class attention maps of the images ``x`` on the backbone's feature grid."""
        if not isinstance(self.clf, InterventionalClassifier):
            raise UserError('IDA: this model has no classes (num_classes=0), so no class attention')
        feats = self.forward_features(x)
        return self.clf.class_attention(feats).unflatten(-1, feats.shape[-2:])

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The whole head ``clf`` (class attention, attention layers, scoring): all of it is class-specific."""
        return self.clf

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A head for ``num_classes`` classes (0: none, ``forward`` gives pre-logits), on this model's device
        and dtype and in its train/eval mode; an existing head keeps its attention layers (see
        ``InterventionalClassifier.reset``). ``global_pool``: the pre-logits pooling ('' for the map)."""
        if global_pool is not None:
            self._set_pool(global_pool)
        ref = next(self.backbone.parameters())
        if num_classes and isinstance(self.clf, InterventionalClassifier):
            self.clf.reset(num_classes)
        else:
            self.clf = self._new_head(num_classes, ref.device, ref.dtype).train(self.training)
        self.num_classes = num_classes

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if hasattr(self.backbone, 'set_grad_checkpointing'):
            self.backbone.set_grad_checkpointing(enable)


def _features_backbone(name: str, pretrained: bool, kwargs: Dict[str, Any]) -> nn.Module:
    """timm model ``name`` as ``features_only`` (its default levels unless ``kwargs`` picks them). ``img_size``
    goes only to backbones that take it: a transformer needs it for its position embedding, a convnet takes
    any size and refuses the argument."""
    try:
        return timm.create_model(name, pretrained=pretrained, features_only=True, **kwargs)
    except TypeError as e:
        if 'img_size' not in kwargs or 'img_size' not in str(e):
            raise
        kwargs = {k: v for k, v in kwargs.items() if k != 'img_size'}
        return timm.create_model(name, pretrained=pretrained, features_only=True, **kwargs)


def _ida_on(backbone: str, pretrained_backbone: bool = False, num_classes: int = 80, heavy: bool = True,
            num_head: int = 4, beta: float = 1 / 32, release_view: bool = True, global_pool: str = 'avg',
            device=None, dtype=None, backbone_cache_dir=None, **backbone_kwargs) -> IDA:
    """IDA on timm model ``backbone``; ``backbone_kwargs`` (img_size, in_chans, drop_path_rate, ...) go to it,
    and an argument neither takes raises the backbone's TypeError."""
    backbone_kwargs.pop('drop_rate', None)  # the release has no dropout; timm's feature wrappers drop the classifier
    net = _features_backbone(backbone, pretrained_backbone, dict(backbone_kwargs, device=device, dtype=dtype,
                                                                 cache_dir=backbone_cache_dir))
    return IDA(net, num_classes, num_head, heavy, beta, release_view, global_pool,
               in_chans=backbone_kwargs.get('in_chans'), device=device, dtype=dtype)


def _cfg(size: int, pool: int, first_conv: str, num_head: int = 4, chans: int = 3, **kwargs) -> Dict[str, Any]:
    """The release's preprocessing: square resize to ``size``, no crop, ImageNet statistics; ``pool``: the
    side of the backbone's last map at ``size``. ``classifier`` names the class-count-dependent weights
    (timm drops them when the class count changes). No weights are published: no URL, as the zoo's others."""
    return {'url': '', 'num_classes': 80, 'input_size': (chans, size, size), 'pool_size': (pool, pool),
            'crop_pct': 1.0, 'interpolation': 'bilinear', 'mean': _IMAGENET_MEAN, 'std': _IMAGENET_STD,
            'first_conv': first_conv, 'classifier': tuple(f'clf.head.{i}' for i in range(num_head)), **kwargs}


def create_ida(backbone: str, pretrained: bool = False, num_classes: int = 80, heavy: bool = True,
               num_head: int = 4, beta: float = 1 / 32, release_view: bool = True, input_size: int = 448,
               **backbone_kwargs) -> IDA:
    """IDA on any timm model ``backbone`` (``pretrained``: the backbone's ImageNet weights, as the release
    starts from). ``backbone_kwargs`` (drop_path_rate, img_size, in_chans, ...) go to the backbone. Its
    ``pretrained_cfg`` is the release's preprocessing at ``input_size`` with the backbone's statistics
    (neutral ones for another channel count)."""
    backbone_kwargs.setdefault('img_size', input_size)
    model = _ida_on(backbone, pretrained, num_classes, heavy, num_head, beta, release_view, **backbone_kwargs)
    img_size = backbone_kwargs.get('img_size') or input_size
    size = int(img_size if isinstance(img_size, int) else img_size[0])
    base = dict(getattr(model.backbone, 'pretrained_cfg', None) or {})
    mean, std = base.get('mean', _IMAGENET_MEAN), base.get('std', _IMAGENET_STD)
    if len(mean) != model.in_chans:
        mean, std = (0.5,) * model.in_chans, (0.5,) * model.in_chans
    first_conv = base.get('first_conv') or ''
    model.pretrained_cfg = model.default_cfg = dict(
        _cfg(size, size // model.feature_info[-1]['reduction'], model.resolve_name(first_conv) if first_conv else '',
             num_head, model.in_chans, mean=tuple(mean), std=tuple(std)),
        architecture=f'ida_{"heavy" if heavy else "light"}_{backbone}', num_classes=num_classes, top_down=False)
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
#: Their pretrained cfgs beyond ``_cfg``'s defaults: the last map's side (stride 32, or the patch), the first
#: convolution's name in IDA, the transformers' fixed input size (position embedding, windows) and, for the
#: Fashion-MNIST variants, the task's 10 classes and the backbone's channels and statistics (test_resnet's 0.5,
#: AbSViT-micro's grey Fashion-MNIST ones), which the FMNIST_ML recipe takes from the model.
_SWIN = dict(pool=12, first_conv='backbone.patch_embed.proj', fixed_input_size=True)
_VARIANT_CFGS: Dict[str, Dict[str, Any]] = {
    'resnet101': dict(pool=14, first_conv='backbone.conv1'),
    'swin_base_patch4_window12_384': _SWIN,
    'swin_large_patch4_window12_384': _SWIN,
    'test_resnet': dict(pool=2, first_conv='backbone.conv1.0', num_classes=10, mean=(0.5,) * 3, std=(0.5,) * 3),
    'absvit_small_patch16_224': dict(pool=28, first_conv='backbone.model.patch_embed.proj', fixed_input_size=True),
    'absvit_micro_patch8_64': dict(pool=8, first_conv='backbone.model.patch_embed.proj', fixed_input_size=True,
                                   num_classes=10, chans=1, mean=(0.2860,), std=(0.3530,)),
}


def _variant_name(suffix: str, heavy: bool) -> str:
    return f'ida_{"heavy" if heavy else "light"}_{suffix}'


# IDA models are bottom-up (no two-pass forward of their own, whatever their backbone runs): no twins
default_cfgs = generate_default_cfgs(recorded_cfgs({
    _variant_name(suffix, heavy): _cfg(IDA_BACKBONES[suffix][2], num_head=IDA_BACKBONES[suffix][1],
                                       **_VARIANT_CFGS[suffix])
    for suffix in IDA_BACKBONES for heavy in (True, False)}, twins={}))


def _features_only(name: str, backbone: str, pretrained: bool, kwargs: Dict[str, Any]) -> nn.Module:
    """``features_only=True`` on an IDA model: its backbone's feature wrapper (what IDA's head reads), at the
    IDA cfg's input size and channels, with the head's arguments dropped and the cfg attached."""
    cfg = resolve_pretrained_cfg(name, kwargs.pop('pretrained_cfg', None),
                                 kwargs.pop('pretrained_cfg_overlay', None)).to_dict()
    for key in ('num_classes', 'global_pool', 'num_head', 'beta', 'heavy', 'release_view', 'drop_rate'):
        kwargs.pop(key, None)
    kwargs.setdefault('in_chans', cfg['input_size'][0])
    if cfg.get('fixed_input_size'):
        kwargs.setdefault('img_size', cfg['input_size'][-2:])
    net = _features_backbone(backbone, pretrained, kwargs)
    net.pretrained_cfg = net.default_cfg = pretrained_cfg_for_features(cfg)
    return net


def _create(suffix: str, heavy: bool, pretrained: bool, **kwargs) -> nn.Module:
    """Registered IDA model through ``build_model_with_cfg`` (cfg attached, num_classes / in_chans / img_size
    defaults from it). ``pretrained`` loads the backbone's ImageNet weights (the release's starting point; no
    IDA weights are published: release checkpoints load with ``remap_release_state_dict``)."""
    backbone, num_head, _, *extra = IDA_BACKBONES[suffix]
    name = _variant_name(suffix, heavy)
    kwargs = {**(extra[0] if extra else {}), 'num_head': num_head, **kwargs}
    if kwargs.pop('features_only', False):
        return _features_only(name, backbone, pretrained, kwargs)
    return build_model_with_cfg(_ida_on, name, False, backbone=backbone, pretrained_backbone=pretrained,
                                heavy=heavy, backbone_cache_dir=kwargs.pop('cache_dir', None), **kwargs)


def _register(suffix: str, heavy: bool) -> None:
    backbone, num_head = IDA_BACKBONES[suffix][:2]
    name = _variant_name(suffix, heavy)

    def entrypoint(pretrained: bool = False, **kwargs) -> IDA:
        return _create(suffix, heavy, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = f'IDA ({"heavy" if heavy else "light"} head) on timm\'s {backbone}, {num_head} groups.'
    entrypoint.__module__ = __name__
    register_model(entrypoint)


for _suffix in IDA_BACKBONES:
    for _heavy in (True, False):
        _register(_suffix, _heavy)
