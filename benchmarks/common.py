"""What the benchmark scripts share: the project's registered models and their bottom-up twins,
FLOP counting, model building (incl. the naive reference), the training criterion, and a
description of the machine.

Whether a model is top-down and which model is its bottom-up twin is what its registration records
(``models.backbone.ModelCfg``: ``top_down`` and ``bottom_up_twin`` in its timm pretrained config), read
by ``model_record``; nothing is guessed from names. timm's own models are bottom-up (none of them is
top-down); any other model without a record is an error (``UnrecordedModelError``).
"""
import datetime
import os
import platform
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import timm
from timm.models import model_entrypoint
from torch.utils.flop_counter import FlopCounterMode

import models  # noqa: F401  (registers the zoo with timm)

#: timm's own ViTs: the bottom-up baselines of the patch-16 AbSViTs (not forked by the project).
VIT_BASELINES = ('vit_tiny_patch16_224', 'vit_small_patch16_224', 'vit_base_patch16_224')
#: prefix of a model name that means "the naive reference implementation of that AbSViT"
NAIVE_PREFIX = 'naive:'
#: the package prefix of the modules that register timm's own models (all bottom-up)
TIMM_ZOO = 'timm.'


class ModelRecord(NamedTuple):
    """What a model is, for the benchmarks: top-down or not, its bottom-up twin (or None), and where
    that was read (``source``), so that a report can say why a model was paired as it was."""
    top_down: bool
    twin: Optional[str]
    source: str


class UnrecordedModelError(ValueError):
    """A model outside timm's own zoo whose pretrained config does not say whether it is top-down."""


def project_model_names() -> List[str]:
    """Every model registered by this project's ``models`` package (found through timm's registry,
    so models added later are picked up without touching the benchmarks)."""
    pkg = models.__name__
    names = []
    for name in timm.list_models():
        module = getattr(model_entrypoint(name), '__module__', '') or ''
        if module == pkg or module.startswith(pkg + '.'):
            names.append(name)
    return sorted(names)


def all_model_names() -> List[str]:
    """The project's models and the timm ViT baselines."""
    return sorted(set(project_model_names()) | set(VIT_BASELINES))


def model_record(name: str) -> ModelRecord:
    """Whether model ``name`` is top-down and its bottom-up twin, from its pretrained config's record
    (``top_down``, ``bottom_up_twin``); ``naive:<name>`` is top-down with ``<name>``'s twin. timm's own
    models carry no record and are bottom-up; any other model without one raises
    ``UnrecordedModelError`` (a new backbone registered without ``models.backbone.recorded_cfgs``)."""
    if name.startswith(NAIVE_PREFIX):
        base = model_record(name[len(NAIVE_PREFIX):])
        return ModelRecord(True, base.twin, f'naive reference ({base.source})')
    if not timm.is_model(name):
        raise ValueError(f'unknown model {name!r}: not registered with timm')
    cfg = timm.models.get_pretrained_cfg(name)
    top_down = getattr(cfg, 'top_down', None)
    if top_down is not None:
        return ModelRecord(bool(top_down), getattr(cfg, 'bottom_up_twin', None), 'pretrained_cfg')
    module = getattr(model_entrypoint(name), '__module__', '') or ''
    if module.startswith(TIMM_ZOO):
        return ModelRecord(False, None, "timm's own zoo")
    raise UnrecordedModelError(
        f'{name} (registered by {module}) does not record whether it is top-down: register its configs '
        'through models.backbone.recorded_cfgs (top_down, bottom_up_twin; see docs/adding_a_backbone.md)')


def twin_of(name: str, known: Optional[Sequence[str]] = None) -> Optional[str]:
    """The recorded bottom-up twin of a top-down model (``absvit_small_patch16_224`` ->
    ``vit_small_patch16_224``, ``absdat_tiny`` -> ``dat_tiny``; ``naive:<name>``: ``<name>``'s), if it is
    among ``known`` (default: every registered model); ``None`` for a bottom-up model."""
    twin = model_record(name).twin
    known = set(timm.list_models()) if known is None else set(known)
    return twin if twin in known else None


def is_top_down_name(name: str) -> bool:
    """Whether model ``name`` is top-down, as its registration records it (see ``model_record``)."""
    return model_record(name).top_down


def build_model(name: str, device='cpu', **kwargs) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` on ``device`` (``meta`` works for counting); a name
    ``naive:<absvit name>`` gives the naive reference implementation of that model with the same
    weights (``benchmarks/naive_absvit.py``)."""
    if name.startswith(NAIVE_PREFIX):
        from benchmarks.naive_absvit import naive_like
        return naive_like(build_model(name[len(NAIVE_PREFIX):], device, **kwargs))
    with torch.device(device):
        return timm.create_model(name, **kwargs)


def input_size(model: nn.Module, img_size: Optional[int] = None) -> Tuple[int, int, int]:
    """(C, H, W) the model takes by default (its pretrained cfg), or at ``img_size``."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    c, h, w = cfg.get('input_size', (3, 224, 224))
    if img_size is None:
        return c, h, w
    return c, img_size, img_size


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def criterion_for(model: nn.Module) -> nn.Module:
    """The project's training criterion (``losses.py``): CE on each pass + 0.1 x var loss for
    top-down models, plain CE otherwise."""
    from losses import AbSLoss, PlainLoss
    if getattr(model, 'is_top_down', False):
        return AbSLoss(nn.CrossEntropyLoss(), var_weight=0.1)
    return PlainLoss(nn.CrossEntropyLoss())


def model_kwargs_for(model: nn.Module) -> dict:
    return {'return_aux': True} if getattr(model, 'is_top_down', False) else {}


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """``aten.convolution_backward`` FLOPs that respect ``groups``.

    torch's own formula (torch 2.15, ``flop_counter.conv_backward_flop``) counts the weight gradient
    of a grouped convolution as if it were dense, ``groups`` times too many: a depthwise 3x3 conv's
    backward came out 65x its forward (DAT's MLPs and LPUs are depthwise). Each MAC of the input
    gradient and of the weight gradient pairs with one MAC of the forward, so each requested
    gradient costs exactly the forward's FLOPs.
    """
    from torch.utils.flop_counter import conv_flop_count
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def _cpu_flash_attention_flop(query, key, value, *_args, out_shape=None, **_kwargs) -> int:
    """FLOPs of torch's fused CPU attention kernel, which FlopCounterMode does not know in every torch
    release (torch 2.14 counts only the CUDA kernels): a model's count then depended on the device it ran
    on, since on the meta device attention decomposes into matmuls that are counted."""
    from torch.utils.flop_counter import sdpa_flop_count
    return sdpa_flop_count(query, key, value)


def _cpu_flash_attention_backward_flop(grad_out, query, key, value, *_args, out_shape=None, **_kwargs) -> int:
    """Model FLOPs of the attention backward: the gradients of both matmuls, twice the forward, as the meta
    device's decomposition counts them (torch's formula for the fused kernels adds the recomputed scores)."""
    from torch.utils.flop_counter import sdpa_flop_count
    return 2 * sdpa_flop_count(query, key, value)


def _flop_formulas() -> dict:
    """Corrections and additions to FlopCounterMode's formulas (ops missing from this torch are skipped)."""
    formulas = {torch.ops.aten.convolution_backward: _conv_backward_flop}
    for name, fn in (('_scaled_dot_product_flash_attention_for_cpu', _cpu_flash_attention_flop),
                     ('_scaled_dot_product_flash_attention_for_cpu_backward', _cpu_flash_attention_backward_flop)):
        if hasattr(torch.ops.aten, name):
            formulas[getattr(torch.ops.aten, name)] = fn
    return formulas


FLOP_FORMULAS = _flop_formulas()


def count_flops(model: nn.Module, x: torch.Tensor, train: bool = False,
                y: Optional[torch.Tensor] = None) -> Tuple[int, Dict[str, int]]:
    """FLOPs (``FlopCounterMode``: matmuls, convolutions, attention; 1 MAC = 2 FLOPs) of one
    inference forward (``model.eval()``, no grad) or, with ``train``, of one training forward +
    backward with the project's criterion. Returns (total, per-operator)."""
    was_training = model.training
    try:
        with FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as counter:
            if train:
                model.train()
                crit = criterion_for(model)
                if y is None:
                    y = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
                loss = crit(model(x, **model_kwargs_for(model)), y)
                loss.backward()
            else:
                model.eval()
                with torch.no_grad():
                    model(x)
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    per_op = {str(op): n for op, n in counter.get_flop_counts().get('Global', {}).items()}
    return counter.get_total_flops(), per_op


def count_model_flops(name: str, batch: int = 1, img_size: Optional[int] = None, train: bool = False,
                      devices: Sequence[str] = ('meta', 'cpu'), **kwargs) -> Tuple[int, int, Tuple[int, int, int]]:
    """(FLOPs, params, input size) of model ``name``; counted on the meta device (instant) and,
    if the model does not run there, on the CPU."""
    err = None
    for dev in devices:
        try:
            model = build_model(name, dev, **kwargs)
            size = input_size(model, img_size)
            x = torch.randn(batch, *size, device=dev)
            flops, _ = count_flops(model, x, train=train)
            return flops, num_params(model), size
        except (NotImplementedError, RuntimeError) as e:  # an op without a meta kernel, .item() on meta...
            err = e
    raise RuntimeError(f'could not count the FLOPs of {name}: {err}') from err


def machine_info(device: Optional[torch.device] = None) -> Dict[str, str]:
    """Date, CPU / GPU, core counts and library versions, for the header of every table."""
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
        'cpu': f'{cpu} ({usable} usable cores, torch threads {torch.get_num_threads()})',
        'torch': torch.__version__, 'timm': timm.__version__, 'python': platform.python_version(),
    }
    if device is not None and torch.device(device).type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
        info['cuda'] = str(torch.version.cuda)
    return info


def format_machine(info: Dict[str, str]) -> str:
    return ' | '.join(f'{k}: {v}' for k, v in info.items())


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], align: Optional[str] = None) -> str:
    """A GitHub markdown table; ``align`` one char per column (l/r)."""
    align = align or 'l' + 'r' * (len(header) - 1)
    sep = ['---:' if a == 'r' else ':---' for a in align]
    lines = ['| ' + ' | '.join(map(str, header)) + ' |', '| ' + ' | '.join(sep) + ' |']
    lines += ['| ' + ' | '.join(map(str, r)) + ' |' for r in rows]
    return '\n'.join(lines)
