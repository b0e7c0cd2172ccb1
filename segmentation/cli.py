"""What ``segmentation/train.py`` and ``segmentation/test.py`` share: the config from the command line
(mmseg's flags), the checks that run before mmengine's Runner starts, and one-line errors."""
import argparse
import os
import os.path as osp
import sys
from typing import Callable, List, Optional

from errors import UserFacingError, UserError

__all__ = ['common_parser', 'load_config', 'run_cli']


def common_parser(description: str) -> argparse.ArgumentParser:
    """The flags mmseg's tools share: --work-dir, --cfg-options, --launcher (and --local_rank)."""
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description=description)
    p.add_argument('config', help='config file (segmentation/configs/...)')
    p.add_argument('--work-dir', help='where logs, TensorBoard events and checkpoints go '
                                      '(default: work_dirs/<config name>)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                   help='override config entries, key=value (e.g. train_dataloader.batch_size=4)')
    p.add_argument('--data-root', help="the dataset folder, for every dataloader (instead of the config's)")
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                   help="'pytorch' under torchrun (DDP, SyncBN)")
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return p


def load_config(args: argparse.Namespace):
    """The config file with the command line applied; a clear error for a missing file."""
    from mmengine.config import Config
    if not osp.isfile(args.config):
        raise UserError(f'config file not found: {args.config}')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.data_root:
        for split in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            if cfg.get(split):
                cfg[split].dataset.data_root = args.data_root
    cfg.launcher = args.launcher
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg


def run_cli(main: Callable[[Optional[List[str]]], None], argv: Optional[List[str]] = None) -> int:
    """Run ``main``; a ``UserFacingError`` is printed as one line (no traceback), exit status 1."""
    try:
        main(argv)
    except UserFacingError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    return 0
