"""Evaluate a segmentation checkpoint (mIoU from mmseg's IoUMetric).

The checkpoint is read weights-only: a file that could run code is refused (``--trusted`` for an
mmengine checkpoint from a source you trust).

    python segmentation/test.py CONFIG CHECKPOINT [--work-dir D] [--slide] [--cfg-options k=v ...]
    torchrun --nproc_per_node=8 segmentation/test.py CONFIG CHECKPOINT --launcher pytorch
"""
import os.path as osp
import sys

from errors import UserError
from segmentation.cli import build_runner, common_parser, load_config, run_cli


def cli(argv=None) -> int:
    """The console script ``absvit-seg-test`` (pyproject.toml): ``main`` through ``errors.run_cli``, whose
    exit status it returns (a user error is one line on stderr and status 2)."""
    return run_cli(main, argv)


def parse_args(argv=None):
    p = common_parser('Test a segmentor (MMSegmentation)')
    p.add_argument('checkpoint', help='segmentation checkpoint (a .pth that train.py wrote)')
    p.add_argument('--slide', action='store_true', help='sliding-window inference with crop-size windows, '
                                                       'stride 2/3 of the crop, instead of the whole image')
    return p.parse_args(argv)


def testing_config(args):
    cfg = load_config(args)
    if not osp.isfile(args.checkpoint):
        raise UserError(f'checkpoint not found: {args.checkpoint}')
    cfg.load_from = args.checkpoint
    cfg.model.backbone.init_cfg = None  # the segmentation checkpoint holds the backbone too
    if args.slide:
        crop = tuple(cfg.crop_size)
        cfg.model.test_cfg = dict(mode='slide', crop_size=crop, stride=tuple(c * 2 // 3 for c in crop))
    return cfg


def main(argv=None):
    from segmentation.distributed import prepare_cpu_distributed
    from segmentation.layouts import check_config_data
    args = parse_args(argv)
    cfg = testing_config(args)
    check_config_data(cfg, splits=('test_dataloader',))
    prepare_cpu_distributed(cfg)
    from segmentation.checkpoints import RequireAllWeights
    runner = build_runner(cfg, trusted=args.trusted)
    runner.register_hook(RequireAllWeights())
    runner.test()


if __name__ == '__main__':
    sys.exit(run_cli(main))
