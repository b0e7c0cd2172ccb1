"""Train a segmentation model with MMSegmentation / mmengine's Runner.

    python segmentation/train.py CONFIG [--work-dir D] [--resume] [--amp] [--backbone-checkpoint CKPT]
                                        [--cfg-options k=v ...]
    torchrun --nproc_per_node=8 segmentation/train.py CONFIG --launcher pytorch ...

``--backbone-checkpoint`` is the classification checkpoint to start from (this project's main.py
output or a release file), the same as ``--cfg-options model.backbone.init_cfg.checkpoint=CKPT``.
``--resume`` continues from the last checkpoint in the work dir (or ``--resume-from FILE``).
Checkpoints are read weights-only (a file that could run code is refused); ``--trusted`` reads
mmengine checkpoints from a source you trust in full (``segmentation/checkpoints.py``).
"""
import os.path as osp
import sys

from errors import UserError
from segmentation.cli import build_runner, common_parser, load_config, run_cli


def cli(argv=None) -> int:
    """The console script ``absvit-seg-train`` (pyproject.toml): ``main`` through ``errors.run_cli``, whose
    exit status it returns (a user error is one line on stderr and status 2)."""
    return run_cli(main, argv)


def parse_args(argv=None):
    p = common_parser('Train a segmentor (MMSegmentation)')
    p.add_argument('--resume', action='store_true', help='resume from the latest checkpoint in the work dir')
    p.add_argument('--resume-from', help='resume from this checkpoint file')
    p.add_argument('--amp', action='store_true', help='automatic mixed precision')
    p.add_argument('--backbone-checkpoint', help='classification checkpoint to initialise the backbone with')
    return p.parse_args(argv)


def training_config(args):
    """The config with train.py's own flags applied."""
    cfg = load_config(args)
    if args.backbone_checkpoint:
        cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=args.backbone_checkpoint)
    if args.resume_from and '://' not in args.resume_from and not osp.isfile(args.resume_from):
        raise UserError(f'--resume-from: checkpoint not found: {args.resume_from}')
    if args.resume or args.resume_from:
        cfg.resume = True
        cfg.load_from = args.resume_from  # None: mmengine finds the work dir's last checkpoint
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    return cfg


def main(argv=None):
    from segmentation.distributed import prepare_cpu_distributed
    from segmentation.layouts import check_config_data
    args = parse_args(argv)
    cfg = training_config(args)
    check_config_data(cfg)
    prepare_cpu_distributed(cfg)
    runner = build_runner(cfg, trusted=args.trusted)
    runner.train()
    return runner


if __name__ == '__main__':
    sys.exit(run_cli(main))
