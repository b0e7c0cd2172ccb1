"""The steering figure: how a class prior moves a segmentor's top-down features and its predicted map.

    python segmentation/steering_figure.py CONFIG CHECKPOINT [--image synthetic:SEED | skimage:NAME | FILE ...]
        [--alpha 1] [--classes N] [--size H W] [--out segmentation/steering.png] [--trusted]

For every image: the prediction with the learned prompt, then for each of the ``--classes`` classes the
model predicts most (by area), the relative change of the final feature map when that class's prior
(``segmentation.steering.class_prior``) replaces the prompt, with the class's predicted region outlined,
and the steered prediction. It prints, per prior, the share of the feature change that falls inside the
class's region next to the region's share of the image: a prior that steers attention to its class
puts more change there than the area alone would.
"""
import argparse
import os.path as osp
import sys
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from errors import UserError
from models.checkpoint import select_state_dict
from segmentation.steering import prior_from_outputs, steering_effect, final_map_and_logits

__all__ = ['load_image', 'change_share', 'steering_rows', 'draw', 'main']


def load_image(spec: str, size: Tuple[int, int]) -> np.ndarray:
    """An RGB uint8 (H, W, 3) image at ``size``: ``synthetic:SEED`` (a scene of segmentation/synthetic.py,
    classes 2-5 as the tiny ADE20K data), ``skimage:NAME`` (a photo inside scikit-image) or a file."""
    from PIL import Image
    if spec.startswith('synthetic:'):
        from segmentation.synthetic import synthetic_scene
        img, _ = synthetic_scene(np.random.default_rng(int(spec.split(':', 1)[1])), size, [2, 3, 4, 5], 1)
        return img
    if spec.startswith('skimage:'):
        import skimage.data
        name = spec.split(':', 1)[1]
        if not hasattr(skimage.data, name):
            raise UserError(f'scikit-image has no photo {name!r} (try astronaut, coffee, chelsea, rocket)')
        arr = getattr(skimage.data, name)()
        pil = Image.fromarray(arr if arr.ndim == 3 else np.stack([arr] * 3, -1)).convert('RGB')
    elif osp.isfile(spec):
        pil = Image.open(spec).convert('RGB')
    else:
        raise UserError(f'image not found: {spec} (a file, synthetic:SEED or skimage:NAME)')
    return np.asarray(pil.resize(size[::-1], Image.BICUBIC))


def change_share(change: torch.Tensor, region: torch.Tensor) -> Tuple[float, float]:
    """(share of the feature change inside ``region``, the region's share of the map); both (h, w), the
    region as the fraction of each feature cell the class covers."""
    region = region.float()
    return float((change * region).sum() / change.sum().clamp_min(1e-12)), float(region.mean())


def _inputs(segmentor, image: np.ndarray) -> torch.Tensor:
    """The image normalised by the segmentor's own data preprocessor, (1, 3, H, W)."""
    data = segmentor.data_preprocessor({'inputs': [torch.from_numpy(image.copy()).permute(2, 0, 1).contiguous()]},
                                       training=False)
    return data['inputs']


def steering_rows(segmentor, image: np.ndarray, n_classes: int, alpha: float) -> Dict:
    """The learned-prompt prediction and, for the ``n_classes`` largest predicted classes, their steering
    (the learned-prompt forward runs once and serves every prior)."""
    x = _inputs(segmentor, image)
    baseline = final_map_and_logits(segmentor, x)
    pred = baseline[1].argmax(1)[0]
    ids, counts = pred.unique(return_counts=True)
    rows = []
    for k in ids[counts.argsort(descending=True)][:n_classes].tolist():
        prior = prior_from_outputs(*baseline, k)
        effect = steering_effect(segmentor, x, prior, alpha=alpha, baseline=baseline)
        change = effect['feature_change'][0]
        region = F.interpolate((pred == k)[None, None].float(), size=change.shape, mode='area')[0, 0]
        inside, area = change_share(change, region)
        rows.append(dict(cls=k, change=change, region=pred == k, steered=effect['pred_steered'][0],
                         inside=inside, area=area, changed=float(effect['changed'][0])))
    return dict(image=image, pred=pred, rows=rows)


def _colour(pred: torch.Tensor, palette) -> np.ndarray:
    return np.asarray(palette, dtype=np.uint8)[pred.numpy()]


def draw(results: List[Dict], names, palette, alpha: float, out: str) -> None:
    """One row per image: image, prompt prediction, then (feature change, steered prediction) per prior."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    cols = 2 + 2 * max(len(r['rows']) for r in results)
    fig = Figure(figsize=(2.2 * cols, 2.4 * len(results)), dpi=100)
    FigureCanvasAgg(fig)
    for i, res in enumerate(results):
        axes = [fig.add_subplot(len(results), cols, i * cols + j + 1) for j in range(cols)]
        axes[0].imshow(res['image']), axes[0].set_title('image', fontsize=8)
        axes[1].imshow(_colour(res['pred'], palette)), axes[1].set_title('prediction (prompt)', fontsize=8)
        for j, row in enumerate(res['rows']):
            a, b = axes[2 + 2 * j], axes[3 + 2 * j]
            h, w = res['pred'].shape
            a.imshow(row['change'].numpy(), cmap='magma', extent=(0, w, h, 0))
            a.contour(row['region'].numpy(), levels=[0.5], colors='cyan', linewidths=0.8)
            a.set_title(f'prior {names[row["cls"]]}: change\n{row["inside"]:.0%} inside ({row["area"]:.0%} area)',
                        fontsize=7)
            b.imshow(_colour(row['steered'], palette))
            b.set_title(f'steered, α={alpha:g}\n{row["changed"]:.0%} pixels changed', fontsize=7)
        for ax in axes:
            ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('config'), p.add_argument('checkpoint')
    p.add_argument('--image', action='append', default=None, help='synthetic:SEED, skimage:NAME or a file')
    p.add_argument('--alpha', type=float, default=1.0, help='prior scale (the segmentation backbone uses 1)')
    p.add_argument('--classes', type=int, default=3, help='steer with the N largest predicted classes')
    p.add_argument('--size', type=int, nargs=2, default=(64, 64), metavar=('H', 'W'))
    p.add_argument('--out', default='segmentation/steering.png')
    p.add_argument('--trusted', action='store_true', help='the checkpoint comes from a source you trust: read it with '
                   'a full unpickle (never use it for files from elsewhere)')
    return p.parse_args(argv)


def read_weights(checkpoint: str, trusted: bool) -> dict:
    """The segmentor weights of ``checkpoint``, read as test.py reads it: weights-only, or in full with
    ``trusted`` (``segmentation.checkpoints``)."""
    from mmengine.runner import CheckpointLoader
    from segmentation.checkpoints import use_checkpoint_loaders
    if not osp.isfile(checkpoint):
        raise UserError(f'checkpoint not found: {checkpoint}')
    use_checkpoint_loaders(trusted)
    return select_state_dict(CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu'))[0]


def build_segmentor(config: str, checkpoint: str, trusted: bool = False):
    """The segmentor of ``config`` with the weights of ``checkpoint`` (see ``read_weights``)."""
    from mmengine.config import Config
    from mmseg.registry import DATASETS, MODELS
    from mmseg.utils import register_all_modules
    import segmentation  # noqa: F401  (registers the backbone)
    register_all_modules()
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model).eval()
    model.load_state_dict(read_weights(checkpoint, trusted))
    meta = DATASETS.get(cfg.train_dataloader.dataset.type).METAINFO
    return model, meta['classes'], meta['palette']


def main(argv=None):
    args = parse_args(argv)
    model, names, palette = build_segmentor(args.config, args.checkpoint, args.trusted)
    results = []
    for spec in args.image or ['synthetic:0', 'skimage:astronaut']:
        res = steering_rows(model, load_image(spec, tuple(args.size)), args.classes, args.alpha)
        results.append(res)
        for row in res['rows']:
            print(f'{spec}: prior {names[row["cls"]]:<12} change inside its region {row["inside"]:6.1%} '
                  f'(region {row["area"]:6.1%} of the image), {row["changed"]:6.1%} of pixels re-labelled')
    draw(results, names, palette, args.alpha, args.out)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    from errors import run_cli
    sys.exit(run_cli(main))
