"""Time one training iteration (forward, backward, AdamW step) of a config's model on this machine.

    python segmentation/timing.py CONFIG [--batch 2] [--iters 2]

Random images at the config's crop size; the first iteration is a warm-up and is not counted.
"""
import argparse
import sys
import time


def time_iteration(config: str, batch: int = 2, iters: int = 2, device: str = 'cpu') -> float:
    """Seconds per training iteration, the mean over ``iters`` after one warm-up iteration."""
    import torch
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmseg.utils import register_all_modules
    from mmengine.structures import PixelData
    import segmentation  # noqa: F401
    register_all_modules()
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model).to(device).train()
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    h, w = cfg.crop_size
    n_cls = cfg.model.decode_head.num_classes
    inputs = torch.rand(batch, 3, h, w, device=device) * 255
    samples = [SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, n_cls, (1, h, w), device=device)),
                             metainfo=dict(img_shape=(h, w), pad_shape=(h, w))) for _ in range(batch)]
    times = []
    for _ in range(iters + 1):
        t0 = time.perf_counter()
        losses = model.loss(inputs, samples)
        loss, _ = model.parse_losses(losses)
        wrapper.update_params(loss)
        times.append(time.perf_counter() - t0)
    return sum(times[1:]) / iters


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config')
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--iters', type=int, default=2)
    p.add_argument('--device', default='cpu')
    a = p.parse_args()
    print(f'{time_iteration(a.config, a.batch, a.iters, a.device):.2f} s per iteration '
          f'(batch {a.batch}, {a.config})')
