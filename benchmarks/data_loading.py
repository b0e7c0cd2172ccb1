"""Does the ImageNet loader keep up with the GPU? Loader throughput per CPU worker, and the workers needed.

    python benchmarks/data_loading.py                       # 96 generated JPEGs, 1 worker + a DataLoader
    python benchmarks/data_loading.py --smoke               # CI: 8 small JPEGs, seconds
    python benchmarks/data_loading.py --gpu-path --device cuda   # also time the GPU-decode path

It writes ImageNet-like JPEGs (about 500x375, quality 90, smooth content plus noise) to a temporary
folder in the ``train/<class>/`` layout and measures:

1. **the project's training loader per worker** (one process, one torch thread, timed by its CPU
   time so that a shared machine does not understate what a worker with its own core delivers):
   ``datasets.SafeImageFolder`` with ``datasets.build_train_transform`` and the ImageNet recipe
   (``datasets/recipes.py``, as ``main.py --data-set IMNET`` parses it: JPEG decode with PIL,
   RandomResizedCrop, flip, RandAugment ``rand-m9-mstd0.5-inc1``, colour jitter, normalise, random
   erasing) -> img/s of one worker;
2. mixup/cutmix (timm ``Mixup``, as ``engine.py`` applies it to each batch) on the CPU -> img/s;
3. a ``DataLoader`` with ``--workers`` worker processes -> img/s (how it scales on this machine);
4. optionally the **GPU-decode path** (``GpuJpegLoader`` below): workers only read the file bytes;
   ``torchvision.io.decode_jpeg(device=...)`` decodes the batch (nvJPEG on CUDA) and the
   augmentation runs on the device. It runs on the CPU too (what CI exercises), but it is meant for
   CUDA, where it moves the decode and augmentation cost off the CPU workers.

Then ``workers needed = model img/s / per-worker img/s`` for the model throughputs given with
``--model-img-s NAME=IMG_PER_S`` (e.g. from ``benchmarks/throughput.py`` on the GPU) or, by default,
for the AbSViT/ViT training throughput that 45% MFU on an H100 (bf16, 989 TFLOP/s dense) would give,
from the counted training FLOPs of each model.
"""
import argparse
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from argparse import Namespace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import options  # main.py's parser and recipes
from benchmarks.common import count_model_flops, format_machine, machine_info, markdown_table

MFU_ASSUMED = 0.45
H100_BF16_TFLOPS = 989.0
DEFAULT_MODELS = ('vit_small_patch16_224', 'absvit_small_patch16_224', 'vit_base_patch16_224',
                  'absvit_base_patch16_224')


def recipe() -> Namespace:
    """The settings ``main.py --data-set IMNET`` trains with (the paper's recipe, ``datasets/recipes.py``,
    parsed by ``options.parse_args``), at the recipe model's 224 x 224 RGB input."""
    args = options.parse_args(['--data-set', 'IMNET'])
    args.input_size, args.in_chans = 224, 3  # what main.py resolves from absvit_small_patch16_224's config
    return args


# -------------------------------------------------------------------------------------------------
# data

def make_jpegs(root: str, n: int, size: Tuple[int, int] = (500, 375), classes: int = 4, seed: int = 0,
               quality: int = 90) -> List[str]:
    """``n`` ImageNet-like JPEGs under ``root/train/c<k>/``: smooth random content (upsampled
    low-resolution noise) plus fine noise, sizes jittered +-20% around ``size``."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w = int(size[0] * rng.uniform(0.8, 1.2))
        h = int(size[1] * rng.uniform(0.8, 1.2))
        low = rng.integers(0, 256, (max(h // 16, 2), max(w // 16, 2), 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((w, h), Image.BICUBIC)
        arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, (h, w, 3))
        d = os.path.join(root, 'train', f'c{i % classes}')
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, f'img_{i:05d}.JPEG')
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(p, quality=quality)
        paths.append(p)
    return paths


def train_dataset(root: str, args: Namespace, patch_posterize: bool = True):
    """The project's training dataset. ``patch_posterize``: work around the Pillow >= 13 posterize
    crash (see ``_posterize_old_pillow``) unless the project's transform already does."""
    from datasets import SafeImageFolder, build_train_transform
    from datasets.transforms import pillow_safe_posterize
    tf = build_train_transform(args)
    if patch_posterize:
        pillow_safe_posterize(tf)
    return SafeImageFolder(os.path.join(root, 'train'), transform=tf, what='benchmark')


def mixup_fn(args: Namespace, num_classes: int = 1000):
    from timm.data import Mixup
    return Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, label_smoothing=args.smoothing,
                 num_classes=num_classes)


# -------------------------------------------------------------------------------------------------
# the GPU-decode path

class JpegBytes(Dataset):
    """Items are (raw file bytes, label): all a CPU worker does is read the file. Plain ``bytes``
    travel to the main process by pickling (no shared-memory file descriptor per image)."""

    def __init__(self, samples: Sequence[Tuple[str, int]]):
        self.samples = list(samples)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        with open(path, 'rb') as f:
            return f.read(), label


def _collate_bytes(batch):
    return [b[0] for b in batch], torch.tensor([b[1] for b in batch])


def _as_uint8(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


class GpuJpegLoader:
    """Decode + augment on ``device`` with few kernel launches per image.

    Per batch: ``torchvision.io.decode_jpeg`` of all images at once (nvJPEG on CUDA); per image one
    RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3: a slice, then one bilinear antialiased
    ``interpolate`` into the batch); then, batched: horizontal flip, RandAugment (torchvision's, 2
    ops, magnitude 9) applied to groups of ``aug_group`` images (the ops are drawn per group, not per
    image: with per-image RandAugment a GPU would launch ~20 small kernels per image, which at
    several thousand img/s costs more than it saves), normalise, and mixup/cutmix.

    Not bit-identical to the PIL pipeline (torchvision's RandAugment / resize instead of timm's PIL
    ones; no colour jitter or random erasing; RandAugment ops shared within a group), so switching
    a training run to it is a recipe change to validate, not a drop-in. Workers only read bytes, so
    two suffice at any model throughput. For production, NVIDIA DALI's decoder + ``rand_augment``
    does the same per image on the GPU.
    """

    def __init__(self, samples, batch_size: int, device, workers: int = 2, img_size: int = 224,
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), mixup=None, randaugment: bool = True,
                 aug_group: int = 8):
        from torchvision.transforms import v2
        self.device = torch.device(device)
        self.loader = DataLoader(JpegBytes(samples), batch_size=batch_size, shuffle=True, num_workers=workers,
                                 collate_fn=_collate_bytes, drop_last=True, persistent_workers=workers > 0)
        self.size = img_size
        self.scale, self.ratio = (0.08, 1.0), (3 / 4, 4 / 3)
        self.randaug = v2.RandAugment(num_ops=2, magnitude=9) if randaugment else None
        self.aug_group = max(1, aug_group)
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.mixup = mixup

    def __len__(self):
        return len(self.loader)

    def _crop_params(self, h: int, w: int):
        """RandomResizedCrop's box (torchvision's sampling, with its centre-crop fallback)."""
        area = h * w
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * random.uniform(*self.scale)
            ar = math.exp(random.uniform(*log_r))
            cw, ch = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
            if 0 < cw <= w and 0 < ch <= h:
                return random.randint(0, h - ch), random.randint(0, w - cw), ch, cw
        in_ratio = w / h
        if in_ratio < self.ratio[0]:
            cw, ch = w, int(round(w / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            ch, cw = h, int(round(h * self.ratio[1]))
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def __iter__(self):
        import torch.nn.functional as F
        from torchvision.io import ImageReadMode, decode_jpeg
        S = self.size
        for data, labels in self.loader:
            with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of TorchCodec
                warnings.simplefilter('ignore', DeprecationWarning)
                imgs = decode_jpeg([_as_uint8(d) for d in data], mode=ImageReadMode.RGB, device=self.device)
            x = torch.empty(len(imgs), 3, S, S, device=self.device)
            for k, img in enumerate(imgs):
                top, left, ch, cw = self._crop_params(img.shape[-2], img.shape[-1])
                crop = img[None, :, top:top + ch, left:left + cw].float()
                x[k] = F.interpolate(crop, size=(S, S), mode='bilinear', antialias=True, align_corners=False)[0]
            x = x.clamp_(0, 255).div_(255)
            flip = torch.rand(x.shape[0], device=self.device) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            if self.randaug is not None:
                x = torch.cat([self.randaug(g) for g in x.split(self.aug_group)])
            x = (x - self.mean) / self.std
            y = labels.to(self.device, non_blocking=True)
            if self.mixup is not None:
                x, y = self.mixup(x, y)
            yield x, y


# -------------------------------------------------------------------------------------------------
# measurements

def per_worker_img_s(dataset, n: int, repeats: int = 1) -> float:
    """Images per second of one process running the dataset's loading + transform, with one torch
    thread as in a DataLoader worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _per_worker(dataset, n, repeats)
    finally:
        torch.set_num_threads(threads)


def _per_worker(dataset, n: int, repeats: int) -> float:
    idx = list(range(len(dataset)))
    for i in idx[:2]:  # warm-up: lazy imports, first-call allocations
        dataset[i]
    rates = []
    for r in range(repeats):
        random.Random(r).shuffle(idx)
        t0 = time.process_time()  # CPU time: a worker owns a core; waiting for one here is not its cost
        for i in idx[:n]:
            dataset[i]
        rates.append(min(n, len(idx)) / (time.process_time() - t0))
    return statistics.median(rates)


def mixup_img_s(mix, batch: int, img: int = 224, repeats: int = 5) -> float:
    x = torch.randn(batch, 3, img, img)
    y = torch.randint(0, 1000, (batch,))
    mix(x.clone(), y)
    t0 = time.perf_counter()
    for _ in range(repeats):
        mix(x.clone(), y)
    return batch * repeats / (time.perf_counter() - t0)


def loader_img_s(loader, max_batches: Optional[int] = None, device=None, clock=time.perf_counter) -> float:
    it = iter(loader)
    next(it)  # start-up (worker processes, first batch) not timed
    n, t0 = 0, clock()
    for i, (x, _) in enumerate(it):
        n += x.shape[0]
        if max_batches and i + 1 >= max_batches:
            break
    if device is not None and torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)
    dt = clock() - t0
    return n / dt if n else float('nan')


def h100_train_img_s(models: Sequence[str]) -> Dict[str, float]:
    """Training img/s each model would reach at ``MFU_ASSUMED`` of an H100's bf16 dense peak,
    from its counted training FLOPs per image."""
    out = {}
    for name in models:
        flops, _, _ = count_model_flops(name, train=True)
        out[name] = MFU_ASSUMED * H100_BF16_TFLOPS * 1e12 / flops
    return out


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--images', type=int, default=96, help='JPEGs to generate')
    ap.add_argument('--per-worker-images', type=int, default=64, help='images timed in the single-worker loop')
    ap.add_argument('--repeats', type=int, default=3, help='single-worker loops (median)')
    ap.add_argument('--workers', type=int, default=None, help='DataLoader workers (default: usable cores)')
    ap.add_argument('--batch-size', type=int, default=16)
    ap.add_argument('--gpu-path', action='store_true', help='also time GpuJpegLoader')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', help='for --gpu-path')
    ap.add_argument('--model-img-s', nargs='*', default=None, metavar='NAME=IMG_PER_S',
                    help='model training throughputs to size the workers for (default: 45%% MFU on an H100)')
    ap.add_argument('--models', nargs='*', default=list(DEFAULT_MODELS), help='models for the default estimate')
    ap.add_argument('--keep', help='write the JPEGs here and keep them (default: a temporary folder)')
    ap.add_argument('--smoke', action='store_true', help='CI: 8 small images, no DataLoader processes')
    return ap.parse_args(argv)


def _gpu_path_row(ds, rec, args, workers: int) -> List[str]:
    """GpuJpegLoader's rate: wall clock on CUDA (2 byte-reading workers, device synced at the end); on the
    CPU the same code in one process and thread, per CPU-second (not the point of it)."""
    dev = torch.device(args.device)
    if dev.type == 'cuda':
        gl = GpuJpegLoader(ds.samples, args.batch_size, dev, workers=min(workers, 2), mixup=mixup_fn(rec))
        loader_img_s(gl, device=dev)  # warm-up (nvJPEG handles, kernels)
        rate = loader_img_s(gl, device=dev)
        what = f'{min(workers, 2)} byte-reading workers'
    else:
        gl = GpuJpegLoader(ds.samples, args.batch_size, dev, workers=0, mixup=mixup_fn(rec))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            rate = loader_img_s(gl, clock=time.process_time)
        finally:
            torch.set_num_threads(threads)
        what = '1 process, per CPU-second'
    return [f'GpuJpegLoader on {dev.type} (decode_jpeg + crop + grouped RandAugment + mixup), {what}', f'{rate:.1f}']


def _stage_rows(paths, ds, rec, args, workers: int, log) -> Tuple[List[List[str]], float]:
    """img/s of each stage (decode, the train transform in one worker, mixup, the DataLoader, the GPU path);
    returns the rows and the one-worker rate."""
    from datasets import load_image
    w1 = per_worker_img_s(ds, args.per_worker_images, args.repeats)
    log(f'one worker: {w1:.1f} img/s')
    t0 = time.process_time()  # decode alone, for the breakdown
    for p in paths[:args.per_worker_images]:
        load_image(p)
    decode = min(len(paths), args.per_worker_images) / (time.process_time() - t0)
    mix = mixup_img_s(mixup_fn(rec), args.batch_size, img=224)
    rows = [['PIL decode only (`datasets.load_image`), 1 process, per CPU-second', f'{decode:.1f}'],
            ['project train transform (decode + RRC + flip + RandAugment + jitter + erasing), '
             '1 worker, per CPU-second', f'{w1:.1f}'],
            [f'mixup/cutmix on CPU, batch {args.batch_size} (main process)', f'{mix:.0f}']]
    if workers > 0:
        loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=workers, drop_last=True)
        rows.append([f'DataLoader, {workers} workers, batch {args.batch_size}', f'{loader_img_s(loader):.1f}'])
    if args.gpu_path:
        rows.append(_gpu_path_row(ds, rec, args, workers))
    return rows, w1


def _workers_needed(args, w1: float) -> Tuple[List[List[str]], str]:
    """Per model: the training img/s to feed (given, or at the assumed MFU on an H100) and the PIL workers."""
    if args.model_img_s:
        need = {k: float(v) for k, v in (s.split('=', 1) for s in args.model_img_s)}
        source = 'given'
    else:
        need = h100_train_img_s(args.models)
        source = f'at {MFU_ASSUMED:.0%} MFU on an H100 (bf16 {H100_BF16_TFLOPS:g} TFLOP/s), from counted train FLOPs'
    return [[f'`{k}`', f'{v:.0f}', str(math.ceil(v / w1))] for k, v in need.items()], source


def main(argv=None) -> str:
    args = parse_args(argv)
    t_start = time.perf_counter()
    torch.manual_seed(0)
    size = (500, 375)
    if args.smoke:
        args.images, args.per_worker_images, args.repeats, args.batch_size = 8, 8, 1, 4
        args.workers = 0
        args.models = ['vit_micro_patch4_28_gap', 'absvit_micro_patch4_28_gap']
        size = (160, 120)
    workers = args.workers if args.workers is not None else len(os.sched_getaffinity(0))
    root = args.keep or tempfile.mkdtemp(prefix='absvit_jpegs_')
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    try:
        paths = make_jpegs(root, args.images, size=size)
        mean_kb = statistics.mean(os.path.getsize(p) for p in paths) / 1024
        rec = recipe()
        ds = train_dataset(root, rec)
        rows, w1 = _stage_rows(paths, ds, rec, args, workers, log)
        wrows, source = _workers_needed(args, w1)
        text = '\n'.join([
            '## Data loading (ImageNet recipe of main.py, generated JPEGs)', '',
            format_machine(machine_info()), '',
            f'_{len(paths)} JPEGs of about {size[0]}x{size[1]}, mean {mean_kb:.0f} KiB; '
            f'recipe: aa={rec.aa}, color_jitter={rec.color_jitter}, reprob={rec.reprob}, '
            f'mixup={rec.mixup}, cutmix={rec.cutmix}._', '',
            markdown_table(['stage', 'img/s'], rows), '',
            f'Workers needed (PIL pipeline, {w1:.1f} img/s per worker; model throughput {source}):', '',
            markdown_table(['model', 'train img/s', 'CPU workers needed'], wrows), '',
            f'_Total wall time {time.perf_counter() - t_start:.0f}s._',
        ])
        print(text)
        return text
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    main()
