"""Top-down attention of a checkpoint on your own images: one figure per image, and an alpha sweep.

For every image it writes ``OUT/<stem>.png``: the image, bottom-up attention (pass 1), the prior's token
mask, top-down attention (pass 2) and the top-5 predictions without and with the prior; and (unless
``--no-sweep``) ``OUT/<stem>_alpha.png``: top-down attention for alpha = 1, 3, 10, 40 (paper Fig. 8).

Examples::

    # the release's ImageNet demo model; two photos side by side, prior = a class
    python demo/visualize.py --model absvit_tiny_patch8_224_gap --checkpoint absvit_tiny_patch8_224_gap.pth \\
        --images skimage:chelsea skimage:coffee+skimage:astronaut --prior-class 'Egyptian cat'
    # a Fashion-MNIST model trained by demo/controllability.py on 28x56 canvases
    python demo/visualize.py --model absvit_micro_patch4_28_gap --checkpoint output/controllability/abs.pth \\
        --images fmnist:0+fmnist:1 --prior-class Trouser
    # VQA-style hook: any prior vector of the model's width (.npy or .pt)
    python demo/visualize.py ... --prior-vector text_embedding_projected.npy

Images: a file, ``skimage:NAME`` (photos shipped with scikit-image), ``fmnist:INDEX`` (test split),
``blank``, or ``LEFT+RIGHT`` for two of them side by side. Maps are the token norms after ``--depth``
blocks (default: three quarters of them, the release demo's 9 of 12; 3 of 4 for the micro model), shown
with the release's normalisation (top 30 % of each map's range). Attention comes from ``model.inspect``
(models/topdown.py).
"""
import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from errors import run_cli
from demo.common import (DemoError, class_names, default_depth, image_spec_parts, load_model,
                         load_picture, load_prior_vector, normalize_map, parse_class, prepare_image, spec_stem)

__all__ = ['Prior', 'inspect_image', 'render_attention', 'render_alpha_sweep', 'figure_size_px', 'save_figure',
           'main', 'DEFAULT_ALPHAS']

DEFAULT_ALPHAS = (1.0, 3.0, 10.0, 40.0)
#: alpha used with a class or vector prior unless --alpha is given (the release's demo uses 40).
CLASS_PRIOR_ALPHA = 40.0
DPI = 100
PANEL_H_IN = 2.5   # every image panel is this tall, and as wide as the model input's aspect asks
FIG_H_IN = 3.0     # panels plus titles
TEXT_W_IN = 3.5    # the predictions panel


@dataclass
class Prior:
    """The prior of pass 2: the learned prompt, a class prototype, or an arbitrary vector."""
    label: str
    classes: Optional[int] = None
    vector: Optional[torch.Tensor] = None

    @property
    def learned(self) -> bool:
        return self.classes is None and self.vector is None

    def default_alpha(self, model) -> float:
        return float(model.alpha) if self.learned else CLASS_PRIOR_ALPHA


def inspect_image(model, x: torch.Tensor, prior: Prior, alpha: float, depth: Optional[int] = None) -> Dict:
    """``model.inspect`` on one normalised image (C, H, W); numpy maps and softmax probabilities.
    ``depth`` defaults to ``common.default_depth`` (3/4 of the blocks)."""
    dev = next(model.parameters()).device
    depth = default_depth(model) if depth is None else depth
    kwargs = {}
    if prior.classes is not None:
        kwargs['classes'] = [prior.classes]
    elif prior.vector is not None:
        kwargs['prior'] = prior.vector.to(dev)
    out = model.inspect(x[None].to(dev), alpha=alpha, depth=depth, **kwargs)
    as_np = lambda t: None if t is None else t[0].float().cpu().numpy()
    return {
        'bottom_up': as_np(out['bottom_up']), 'top_down': as_np(out['top_down']),
        'bottom_up_norm': as_np(normalize_map(out['bottom_up'])),
        'top_down_norm': None if out['top_down'] is None else as_np(normalize_map(out['top_down'])),
        'prior_mask': as_np(out['prior_mask']),
        'probs_bottom_up': as_np(out['logits_bottom_up'].softmax(-1)), 'probs': as_np(out['logits'].softmax(-1)),
    }


def _top(probs: np.ndarray, names: Sequence[str], k: int = 5) -> List[Tuple[str, float]]:
    order = np.argsort(-probs)[:k]
    return [(names[i], float(probs[i])) for i in order]


def figure_size_px(aspect: float, n_image_panels: int, text_panel: bool) -> Tuple[int, int]:
    """Pixel size of a figure: image panels ``PANEL_H_IN * aspect`` wide, plus the predictions panel."""
    w = n_image_panels * PANEL_H_IN * aspect + (TEXT_W_IN if text_panel else 0.0)
    return int(round(w * DPI)), int(round(FIG_H_IN * DPI))


def _figure(aspect: float, n_image_panels: int, text_panel: bool):
    w, h = figure_size_px(aspect, n_image_panels, text_panel)
    fig = Figure(figsize=(w / DPI, h / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    ratios = [PANEL_H_IN * aspect] * n_image_panels + ([TEXT_W_IN] if text_panel else [])
    axes = fig.subplots(1, len(ratios), gridspec_kw={'width_ratios': ratios})
    fig.subplots_adjust(left=0.005, right=0.995, top=0.86, bottom=0.02, wspace=0.06)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, list(axes)


def _show_image(ax, disp: np.ndarray, title: str):
    if disp.shape[-1] == 1:
        ax.imshow(disp[..., 0], cmap='gray', vmin=0, vmax=1)
    else:
        ax.imshow(disp)
    ax.set_title(title, fontsize=9)


def _show_map(ax, m: Optional[np.ndarray], title: str, missing: str = ''):
    ax.set_title(title, fontsize=9)
    if m is None:
        ax.text(0.5, 0.5, missing, ha='center', va='center', fontsize=8, wrap=True, transform=ax.transAxes)
        ax.set_facecolor('#eeeeee')
        return
    ax.imshow(m, cmap='viridis', interpolation='nearest')


def _short(name: str, n: int = 22) -> str:
    return name if len(name) <= n else name[:n - 1] + '.'


def render_attention(disp: np.ndarray, res: Dict, names: Sequence[str], prior_label: str, alpha: float,
                     title: str = '') -> Figure:
    """image | bottom-up attention | prior mask | top-down attention | top-5 without and with the prior."""
    aspect = disp.shape[1] / disp.shape[0]
    fig, (a_img, a_bu, a_mask, a_td, a_txt) = _figure(aspect, 4, True)
    _show_image(a_img, disp, title or 'image')
    _show_map(a_bu, res['bottom_up_norm'], 'bottom-up attention (pass 1)')
    mask = res['prior_mask']
    _show_map(a_mask, mask, 'prior mask' + (f' (max cos {mask.max():.2f})' if mask is not None else ''),
              'no prior (Feedback)')
    _show_map(a_td, res['top_down_norm'], f'top-down attention (α={alpha:g})',
              'no second pass (PerceiverIO re-weights the output tokens only)')
    a_txt.axis('off')
    lines = ['top-5 without prior (pass 1)']
    lines += [f'  {p:5.3f}  {_short(n)}' for n, p in _top(res['probs_bottom_up'], names)]
    lines += ['', f'top-5 with prior: {_short(prior_label, 18)}, α={alpha:g}']
    lines += [f'  {p:5.3f}  {_short(n)}' for n, p in _top(res['probs'], names)]
    a_txt.text(0.0, 1.0, '\n'.join(lines), va='top', ha='left', family='monospace', fontsize=8,
               transform=a_txt.transAxes)
    return fig


def render_alpha_sweep(disp: np.ndarray, results: Sequence[Dict], alphas: Sequence[float], names: Sequence[str],
                       prior_label: str) -> Figure:
    """image | top-down attention at each alpha, each titled with its top-1 prediction."""
    aspect = disp.shape[1] / disp.shape[0]
    fig, axes = _figure(aspect, 1 + len(alphas), False)
    _show_image(axes[0], disp, f'prior: {_short(prior_label, 26)}')
    for ax, a, res in zip(axes[1:], alphas, results):
        (name, p), = _top(res['probs'], names, 1)
        _show_map(ax, res['top_down_norm'], f'α={a:g}: {_short(name, 14)} {p:.2f}',
                  'no second pass (PerceiverIO)')
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    """Write a PNG at the figure's exact size (no tight bounding box, so sizes are predictable)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def resolve_prior(model, prior_class: Optional[str], prior_vector: Optional[str], names: Sequence[str],
                  names_file: Optional[str] = None) -> Prior:
    """The CLI's prior: ``--prior-class`` (index, name, wnid, ``learned``) or ``--prior-vector FILE``."""
    if prior_vector is not None:
        vec = load_prior_vector(prior_vector, model.embed_dim)
        return Prior(label=f'vector {Path(prior_vector).name}', vector=vec)
    if prior_class is None or prior_class.strip().lower() == 'learned':
        return Prior(label='learned prompt')
    idx = parse_class(prior_class, len(names), names_file)
    return Prior(label=f'class {idx} ({names[idx]})', classes=idx)


def visualize(model, specs: Sequence[str], prior: Prior, out_dir: Path, names: Sequence[str],
              alpha: Optional[float] = None, alphas: Sequence[float] = DEFAULT_ALPHAS, depth: Optional[int] = None,
              sweep: bool = True, log=print) -> List[Path]:
    """Render every image; returns the written paths."""
    alpha = prior.default_alpha(model) if alpha is None else alpha
    written, used = [], set()
    for spec in specs:
        x, disp = prepare_image(spec, model)
        stem = spec_stem(spec)
        while stem in used:
            stem += '_'
        used.add(stem)
        res = inspect_image(model, x, prior, alpha, depth)
        fig = render_attention(disp, res, names, prior.label, alpha, title=' + '.join(image_spec_parts(spec)))
        paths = [save_figure(fig, out_dir / f'{stem}.png')]
        if sweep:
            results = [inspect_image(model, x, prior, a, depth) for a in alphas]
            paths.append(save_figure(render_alpha_sweep(disp, results, alphas, names, prior.label),
                                     out_dir / f'{stem}_alpha.png'))
        (n0, p0), = _top(res['probs_bottom_up'], names, 1)
        (n1, p1), = _top(res['probs'], names, 1)
        log(f'{spec}: without prior {n0} ({p0:.2f}), with {prior.label} at α={alpha:g}: {n1} ({p1:.2f}) '
            f'-> {", ".join(str(p) for p in paths)}')
        written += paths
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', required=True, help='a top-down model of the zoo, e.g. absvit_tiny_patch8_224_gap')
    p.add_argument('--checkpoint', required=True, help='checkpoint file (release or this project)')
    p.add_argument('--images', nargs='+', required=True,
                   help='files, skimage:NAME, fmnist:INDEX, blank, or LEFT+RIGHT (two side by side)')
    prior = p.add_mutually_exclusive_group()
    prior.add_argument('--prior-class', help="class index, name, ImageNet wnid, or 'learned' (default: the "
                                            'learned prompt)')
    prior.add_argument('--prior-vector', help='an arbitrary prior (.npy / .pt) of the model width: the VQA-style '
                                              'hook (e.g. a projected text embedding)')
    p.add_argument('--alpha', type=float, default=None,
                   help=f'prior scale (default: the model\'s with the learned prompt, {CLASS_PRIOR_ALPHA:g} with a '
                        'class or vector prior, as in the release demo)')
    p.add_argument('--alphas', type=float, nargs='+', default=list(DEFAULT_ALPHAS), help='alpha sweep values')
    p.add_argument('--no-sweep', action='store_true', help='skip the alpha-sweep figure')
    p.add_argument('--depth', type=int, default=None,
                   help='blocks before the map is read (default: 3/4 of them, the release demo\'s 9 of 12)')
    p.add_argument('--td-mode', choices=list(__import__('models').TD_MODES), default=None,
                   help='top-down mode of the checkpoint (default: as recorded in it, else abs)')
    p.add_argument('--img-size', type=int, nargs=2, metavar=('H', 'W'), default=None,
                   help='model input size (default: as recorded in the checkpoint, else the model\'s)')
    p.add_argument('--class-names', default=None, help='file with one class name per line')
    p.add_argument('--use-ema', action='store_true', help='load the EMA weights of the checkpoint')
    p.add_argument('--device', default='cpu')
    p.add_argument('--out-dir', default='output/attention', help='where the PNGs go')
    return p


def _run_command_line(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    model, msg = load_model(args.model, args.checkpoint, args.td_mode, args.img_size, args.device, args.use_ema)
    print(f'{args.model} (td_mode={model.td_mode}, input {tuple(model.patch_embed.img_size)}): {msg}')
    names = class_names(model.num_classes, args.class_names)
    prior = resolve_prior(model, args.prior_class, args.prior_vector, names, args.class_names)
    if model.td_mode == 'feedback' and not prior.learned:
        print('warning: Feedback models take no prior; the given prior is ignored', file=sys.stderr)
    n_blocks = model.num_td_blocks()
    if args.depth is not None and not 1 <= args.depth <= n_blocks:
        raise DemoError(f'--depth must be in [1, {n_blocks}] for {args.model}, got {args.depth}')
    for spec in args.images:  # fail on a bad image before rendering anything
        for part in image_spec_parts(spec):
            load_picture(part)
    visualize(model, args.images, prior, Path(args.out_dir), names, args.alpha, args.alphas, args.depth,
              not args.no_sweep)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_run_command_line, argv)


if __name__ == '__main__':
    sys.exit(main())
