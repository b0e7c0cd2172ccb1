"""Draw an IDA head's class attention on the offline multi-label canvases (Fashion-MNIST items, FMNIST_ML).

    python demo/ida_attention.py --checkpoint output/fmnist_ml/best_model.pth            # the FMNIST_ML recipe's model
    python demo/ida_attention.py --model ida_light_absvit_micro_patch8_64 --checkpoint ... --out maps.png

For each canvas: the image with its items' boxes, then one panel per class present, the class's attention
(softmax over positions, averaged over the channel groups, upsampled to the canvas). The printed *pointing
share* is the part of each present class's attention that falls on the items of that class (the masks the
canvases keep); spread uniformly it would be the items' share of the canvas.
"""
import argparse
import sys
from typing import Dict, Optional, Sequence

import numpy as np
import timm
import torch
import torch.nn.functional as F

import models.ida  # noqa: F401  (registers ida_*)
from datasets.multilabel import FashionMNISTCanvases, build_multilabel_transform
from demo.common import DemoError
from errors import run_cli
from options import parse_args
from train_state import load_model_weights


def class_maps(model, image: torch.Tensor, size: int) -> torch.Tensor:
    """(K, size, size): every class's attention averaged over the groups, bilinearly upsampled to the canvas."""
    with torch.no_grad():
        att = model.class_attention(image[None])[0].mean(0)          # (K, h, w), each sums to 1
    up = F.interpolate(att[None], size=(size, size), mode='bilinear', align_corners=False)[0]
    return up / up.sum((1, 2), keepdim=True)


def pointing_share(model, canvases: FashionMNISTCanvases, transform, n: int) -> Dict[str, float]:
    """Mean share of each present class's attention on that class's items, and what a uniform map would give."""
    got, uniform = [], []
    for i in range(n):
        s = canvases.sample(i)
        maps = class_maps(model, transform(_pil(s['image'])), canvases.size)
        for c in set(s['labels']):
            mask = torch.from_numpy(np.any([m for m, lab in zip(s['masks'], s['labels']) if lab == c], axis=0))
            got.append(float(maps[c][mask].sum()))
            uniform.append(float(mask.float().mean()))
    return {'pointing_share': float(np.mean(got)), 'uniform_share': float(np.mean(uniform))}


def _pil(arr: np.ndarray):
    from PIL import Image
    return Image.fromarray(arr)


def draw(model, canvases: FashionMNISTCanvases, transform, indices: Sequence[int], out: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    rows = [canvases.sample(i) for i in indices]
    cols = 1 + max(len(set(s['labels'])) for s in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.1 * cols, 2.1 * len(rows)), squeeze=False)
    for ax_row, s in zip(axes, rows):
        maps = class_maps(model, transform(_pil(s['image'])), canvases.size)
        ax_row[0].imshow(s['image'], cmap='gray')
        for (t, l, b, r), lab in zip(s['boxes'], s['labels']):
            ax_row[0].add_patch(Rectangle((l, t), r - l, b - t, fill=False, color='yellow', lw=0.8))
        for ax, c in zip(ax_row[1:], sorted(set(s['labels']))):
            ax.imshow(s['image'], cmap='gray')
            ax.imshow(maps[c].numpy(), cmap='jet', alpha=0.5)
            ax.set_title(canvases.classes[c], fontsize=8)
        for ax in ax_row:
            ax.axis('off')
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _run_command_line(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default=None, help='an ida_* model (default: the FMNIST_ML recipe\'s)')
    p.add_argument('--checkpoint', default=None, help='main.py checkpoint (checkpoint.pth / best_model.pth)')
    p.add_argument('--ema', action='store_true', help='draw the EMA weights')
    p.add_argument('--n', type=int, default=4, help='canvases to draw')
    p.add_argument('--measure', type=int, default=200, help='canvases to measure the pointing share on')
    p.add_argument('--out', default='ida_attention_fmnist.png')
    a = p.parse_args(argv)
    args = parse_args(['--data-set', 'FMNIST_ML'] + (['--model', a.model] if a.model else []))
    model = timm.create_model(args.model, num_classes=10).eval()
    cfg = model.pretrained_cfg
    args.input_size, args.in_chans = cfg['input_size'][-1], cfg['input_size'][0]
    args.mean, args.std = list(cfg['mean']), list(cfg['std'])
    if a.checkpoint:
        load_model_weights(a.checkpoint, model, use_ema=a.ema)
    canvases = FashionMNISTCanvases(args.data_path, train=False, size=args.input_size)
    transform = build_multilabel_transform(args, is_train=False)
    draw(model, canvases, transform, range(a.n), a.out)
    print(f'wrote {a.out}; {pointing_share(model, canvases, transform, a.measure)}')


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_run_command_line, argv)


if __name__ == '__main__':
    sys.exit(main())
