"""Write a corrupted copy of an ImageFolder dataset in the ImageNet-C layout.

    python -m robustness.make_corrupted SRC DST [--corruption all] [--severity all] [--seed 0]
        [--resize 256 --crop 224] [--format png|jpeg] [--workers N]

SRC is ``SRC/<class>/<image>``; DST receives ``DST/<corruption>/<severity>/<class>/<image stem>.<ext>``,
which ``main.py --eval --inc_path DST`` reads (class folders must then be ImageNet wnids). ImageNet-C itself
was made from the ImageNet val set with ``--resize 256 --crop 224``. Images keep their mode (grey stays
grey, anything else becomes RGB). Output is PNG by default (lossless, so only the corruption changes the
pixels); ``--format jpeg`` writes JPEG at ``--quality`` (the release used JPEG). Existing files are skipped
unless ``--overwrite``, so an interrupted run can be resumed. Results do not depend on ``--workers``: each
image's random numbers derive from the seed, the corruption and its pixels.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from multiprocessing import get_context
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from .corruptions import PROFILES, Corruption, missing_requirement, parse_corruptions, \
    parse_severities

EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm', '.tif', '.tiff', '.webp')
LAYOUT = 'SRC/<class>/<image> (one sub-folder per class holding its images)'


class SourceError(RuntimeError):
    pass


def list_images(src: str) -> List[Tuple[str, str]]:
    """(class, file name) of every image under ``src``, sorted."""
    if not os.path.isdir(src):
        raise SourceError(f'{src}: no such folder. Expected layout: {LAYOUT}.')
    classes = sorted(d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d)) and not d.startswith('.'))
    items = [(c, f) for c in classes for f in sorted(os.listdir(os.path.join(src, c)))
             if f.lower().endswith(EXTENSIONS)]
    if not items:
        loose = [f for f in os.listdir(src) if f.lower().endswith(EXTENSIONS)]
        why = (f'images lie directly in {src} (found {len(loose)}), not in class sub-folders' if loose
               else f'no class sub-folder of {src} holds images ({", ".join(EXTENSIONS)})')
        raise SourceError(f'{src}: {why}. Expected layout: {LAYOUT}.')
    return items


def prepare(img: Image.Image, resize: Optional[int], crop: Optional[int]) -> np.ndarray:
    """Mode L or RGB; shorter side resized to ``resize`` (bilinear); centre crop ``crop``; uint8 array."""
    img = img.convert('L' if img.mode in ('L', 'I;16', 'I', '1') else 'RGB')
    if resize:
        w, h = img.size
        s = resize / min(w, h)
        img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
    if crop:
        w, h = img.size
        if crop > min(w, h):
            raise SourceError(f'--crop {crop} is larger than an image of {w}x{h}; add --resize')
        left, top = (w - crop) // 2, (h - crop) // 2
        img = img.crop((left, top, left + crop, top + crop))
    return np.asarray(img)


class Job:
    """Everything a worker needs to corrupt one image in every requested way (picklable)."""

    def __init__(self, args):
        self.src, self.dst = args.src, args.dst
        self.pairs = [(c, s) for c in args.corruptions for s in args.severities]
        self.seed, self.profile = args.seed, args.profile
        self.resize, self.crop = args.resize, args.crop
        self.ext = '.png' if args.format == 'png' else '.jpg'
        self.quality, self.overwrite = args.quality, args.overwrite

    def out_path(self, c, s, cls, name):
        return os.path.join(self.dst, c, str(s), cls, os.path.splitext(name)[0] + self.ext)

    def __call__(self, item) -> int:
        cls, name = item
        todo = [(c, s) for c, s in self.pairs if self.overwrite or not os.path.exists(self.out_path(c, s, cls, name))]
        if not todo:
            return 0
        path = os.path.join(self.src, cls, name)
        try:
            with Image.open(path) as img:
                arr = prepare(img, self.resize, self.crop)
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise SourceError(f'cannot read {path}: {err}') from None
        for c, s in todo:
            out = Corruption(c, s, seed=self.seed, profile=self.profile)(arr)
            path = self.out_path(c, s, cls, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = path + '.tmp'
            kw = {'quality': self.quality} if self.ext == '.jpg' else {}
            Image.fromarray(out).save(tmp, format='PNG' if self.ext == '.png' else 'JPEG', **kw)
            os.replace(tmp, path)
        return len(todo)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog='python -m robustness.make_corrupted', description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('src', help=f'source ImageFolder: {LAYOUT}')
    ap.add_argument('dst', help='output folder: DST/<corruption>/<severity>/<class>/<image>')
    ap.add_argument('--corruption', default='all',
                    help='name(s), comma-separated, or all (the 15), extra (the 4), all+extra (default: all)')
    ap.add_argument('--severity', default='all', help='1..5, comma-separated, or all (default)')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--profile', default='auto', choices=('auto',) + PROFILES,
                    help='parameter table (auto: by image size; see robustness/corruptions/params.py)')
    ap.add_argument('--resize', type=int, default=None, help='resize the shorter side first (ImageNet-C: 256)')
    ap.add_argument('--crop', type=int, default=None, help='then centre-crop to this size (ImageNet-C: 224)')
    ap.add_argument('--format', choices=('png', 'jpeg'), default='png')
    ap.add_argument('--quality', type=int, default=85, help='JPEG quality with --format jpeg')
    ap.add_argument('--workers', type=int, default=1, help='processes (default 1)')
    ap.add_argument('--limit', type=int, default=None, help='only the first N images (sorted by class, name)')
    ap.add_argument('--overwrite', action='store_true', help='rewrite existing files')
    ap.add_argument('--quiet', action='store_true', help='no progress bar')
    args = ap.parse_args(argv)
    try:
        args.corruptions = parse_corruptions(args.corruption)
        args.severities = parse_severities(args.severity)
    except ValueError as err:
        ap.error(str(err))
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        items = list_images(args.src)
    except SourceError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    if args.limit:
        items = items[:args.limit]
    why = missing_requirement(args.corruptions)
    if why is not None:
        print(f'error: {why}', file=sys.stderr)
        return 2
    job = Job(args)
    total = len(items)
    print(f'{total} images x {len(args.corruptions)} corruptions x {len(args.severities)} severities -> {args.dst}',
          file=sys.stderr)
    from tqdm import tqdm
    bar = tqdm(total=total, unit='img', disable=args.quiet, file=sys.stderr, dynamic_ncols=True, mininterval=1.0)
    start, written = time.time(), 0
    try:
        if args.workers > 1:
            with get_context('spawn').Pool(args.workers) as pool:
                for n in pool.imap_unordered(job, items, chunksize=8):
                    written += n
                    bar.update(1)
        else:
            for item in items:
                written += job(item)
                bar.update(1)
    except SourceError as err:
        bar.close()
        print(f'error: {err}', file=sys.stderr)
        return 2
    bar.close()
    print(f'wrote {written} images ({total * len(job.pairs) - written} already there) in '
          f'{time.time() - start:.1f}s', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
