"""List every image under a folder that PIL cannot decode: ``python -m datasets.verify ROOT [ROOT ...]``.

Exit status 1 when any is found (their paths are printed, one per line, with the reason).
"""
import argparse
import os
import sys

from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS


def unreadable_images(root: str):
    """Yield ``(path, reason)`` for each image file under ``root`` that fails to decode."""
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            if not name.lower().endswith(IMG_EXTENSIONS):
                continue
            path = os.path.join(folder, name)
            try:
                with Image.open(path) as img:
                    img.convert('RGB')
            except Exception as e:  # noqa: BLE001 - report anything PIL raises
                yield path, f'{type(e).__name__}: {e}'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('roots', nargs='+')
    bad = 0
    for root in parser.parse_args(argv).roots:
        for path, reason in unreadable_images(root):
            print(f'{path}\t{reason}')
            bad += 1
    print(f'{bad} unreadable image(s)', file=sys.stderr)
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
