"""What ``segmentation/train.py`` and ``segmentation/test.py`` share: the config from the command line
(mmseg's flags), the checks that run before mmengine's Runner starts, and the Runner that reads
checkpoints safely. Errors reach the user through the project's ``errors.run_cli``."""
import argparse
import os
import os.path as osp
import sys

from errors import UserError, run_cli  # noqa: F401  (run_cli: the entry points' runner)

__all__ = ['common_parser', 'load_config', 'build_runner', 'run_cli']


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
    p.add_argument('--trusted', action='store_true',
                   help='the checkpoints this run reads come from a source you trust: read them with a full '
                        'unpickle (mmengine checkpoints from elsewhere, or ones an earlier version of train.py '
                        'wrote). Without it, checkpoints are read weights-only and a file that could run code '
                        'is refused')
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


def build_runner(cfg, trusted: bool = False):
    """mmengine's Runner for ``cfg``, reading checkpoints safely unless ``trusted`` and writing them so
    that they read back safely (``segmentation.checkpoints``)."""
    from mmengine.runner import Runner
    from segmentation.checkpoints import WeightsOnlyStateHook, use_checkpoint_loaders
    use_checkpoint_loaders(trusted)
    runner = Runner.from_cfg(cfg)
    runner.register_hook(WeightsOnlyStateHook())
    return runner
