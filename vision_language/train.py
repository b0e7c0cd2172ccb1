"""Train and evaluate the vision-language model on VQAv2 or Flickr30K (plain PyTorch).

    python -m vision_language.train --config vision_language/configs/vqa_absvit_base.yaml --data-root DIR
    torchrun --nproc_per_node=8 -m vision_language.train --config ... --data-root DIR

One process per device under ``torchrun`` (DDP), bf16/fp16 autocast, gradient accumulation up to the
global batch, METER's optimiser groups and warm-up + linear decay, exact resume from
``OUTPUT/checkpoint.pth`` (the project's ``TrainState``), TensorBoard events and progress bars.
"""
import argparse
import json
import logging
import math
import os
import time
from typing import Dict, Optional

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

import misc
import engine
from options import AMP_DTYPES, load_config
from errors import UserError, run_cli
from train_state import TrainState, gather_rng_states
from vision_language.data import MAX_TEXT_LEN, TextCollate, image_transform
from vision_language.image_encoder import load_image_weights
from vision_language.model import VLConfig, VLModel
from vision_language.optim import build_optimizer, warmup_linear_decay
from vision_language.tasks import TASK_HEAD_MULT, build_task

_logger = logging.getLogger('absvit')


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description='AbSViT / ViT + METER on VQAv2 or Flickr30K', allow_abbrev=False)
    a = p.add_argument
    a('--config', default=None, help='YAML file of any of these flags (the command line wins)')
    a('--task', default='vqa', choices=['vqa', 'flickr'])
    a('--data-root', default=None, help='VQAv2 + COCO folder, or Flickr30K folder (see vision_language/README.md)')
    a('--text-encoder', default='roberta-base', help="hub name or local folder; 'tiny-roberta' for smoke tests")
    a('--tokenizer', default=None, help='default: that of --text-encoder')
    a('--local-files-only', action='store_true')
    a('--image-encoder', default='absvit_base_patch16_224', help='zoo name (vit_base_patch16_224: the baseline)')
    a('--image-size', type=int, default=224)
    a('--image-weights', default=None, help='classification checkpoint of the image encoder (models.load_weights)')
    a('--prior-mode', default='paper', choices=['paper', 'release'])
    a('--hidden-size', type=int, default=768)
    a('--num-heads', type=int, default=12)
    a('--ffn-size', type=int, default=3072)
    a('--fusion-depth', type=int, default=6)
    a('--epochs', type=int, default=10)
    a('--batch-size', type=int, default=512, help='global batch (accumulated to)')
    a('--per-device-batch', type=int, default=32)
    a('--lr', type=float, default=1e-5)
    a('--weight-decay', type=float, default=0.01)
    a('--lr-mult-heads', type=float, default=None, help='default: 50 for VQA, 5 for Flickr30K')
    a('--lr-mult-cross-modal', type=float, default=10.0)
    a('--lr-mult-feedback', type=float, default=3.0)
    a('--warmup', type=float, default=0.1, help='fraction of the updates')
    a('--var-weight', type=float, default=0.1)
    a('--prior-weight', type=float, default=1.0)
    a('--train-splits', default=None, help='VQA: default train2014,val2014 (as METER); Flickr30K: train')
    a('--eval-split', default=None, help='VQA: e.g. val2014 (score) or test-dev2015 (--results-json); '
      'Flickr30K: test (default) or val')
    a('--negatives', type=int, default=15, help='Flickr30K: negative captions per image for the ranking loss')
    a('--max-text-len', type=int, default=None, help='default: 50 for VQA, 40 for Flickr30K')
    a('--amp', default='none', choices=list(AMP_DTYPES))
    a('--clip-grad', type=float, default=None)
    a('--limit', type=int, default=None, help='use only the first N training samples (smoke runs)')
    a('--eval-limit', type=int, default=None)
    a('--eval-only', action='store_true')
    a('--stop-after', type=int, default=None, help='end this run after N epochs (time-limited jobs: resume later '
      'with --resume auto; the schedule still spans --epochs)')
    a('--eval-chunk', type=int, default=64, help='Flickr30K evaluation: pairs per forward')
    a('--results-json', default=None, help='VQA: write test-dev answers for the evaluation server here')
    a('--output-dir', default='output/vl')
    a('--resume', default='', help="checkpoint to resume ('auto': OUTPUT/checkpoint.pth if present)")
    a('--seed', type=int, default=0)
    a('--num-workers', type=int, default=4)
    a('--threads', type=int, default=None, help='torch CPU threads')
    a('--no-progress', action='store_true')
    a('--device', default=None)
    a('--dist-backend', default=None)
    a('--dist-url', default='env://')
    a('--dist-timeout', type=int, default=30)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = get_parser()
    first, _ = parser.parse_known_args(argv)
    if first.config:
        parser.set_defaults(**load_config(first.config, parser))
    args = parser.parse_args(argv)
    if args.data_root is None:
        raise UserError('--data-root is required: the VQAv2 + COCO or Flickr30K folder (see vision_language/README.md)')
    args.max_text_len = args.max_text_len or MAX_TEXT_LEN[args.task]
    args.train_splits = args.train_splits or ('train2014,val2014' if args.task == 'vqa' else 'train')
    args.lr_mult_heads = args.lr_mult_heads if args.lr_mult_heads is not None else TASK_HEAD_MULT[args.task]
    return args


def build_model(args, num_answers: int) -> VLModel:
    if args.text_encoder == 'tiny-roberta':
        from vision_language.tiny import tiny_roberta_config
        text = tiny_roberta_config(vocab_size=30522, hidden_size=32)
    else:
        text = args.text_encoder
    cfg = VLConfig(text_encoder=text, local_files_only=args.local_files_only, image_encoder=args.image_encoder,
                   image_kwargs={'img_size': args.image_size, 'in_chans': 3}, hidden_size=args.hidden_size, num_heads=args.num_heads,
                   ffn_size=args.ffn_size, fusion_depth=args.fusion_depth, num_answers=num_answers,
                   prior_mode=args.prior_mode)
    model = VLModel(cfg)
    if args.image_weights:
        _logger.info(load_image_weights(model.image_encoder.vit, args.image_weights))
    return model


def build_tokenizer(args):
    from transformers import AutoTokenizer
    name = args.tokenizer or args.text_encoder
    if name == 'tiny-roberta':
        raise UserError("--text-encoder tiny-roberta needs --tokenizer (a local tokenizer folder)")
    return AutoTokenizer.from_pretrained(name, local_files_only=args.local_files_only)


def make_loader(dataset, args, train: bool, epoch: int, collate) -> DataLoader:
    """Training: shuffled by a generator seeded with (seed, epoch): the order of an epoch does not depend on
    what ran before it, which exact resume needs. Evaluation: in order, this process's shard only (samples
    rank, rank + world, ...: no padding, no duplicates; the caller reduces over the processes)."""
    per = args.per_device_batch
    if not train:
        sampler = misc.ShardSampler(len(dataset), misc.get_rank(), misc.get_world_size())
        return DataLoader(dataset, batch_size=per, sampler=sampler, num_workers=args.num_workers, collate_fn=collate)
    if misc.is_dist():
        sampler = DistributedSampler(dataset, seed=args.seed, drop_last=True)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
    return DataLoader(dataset, batch_size=per, sampler=sampler, num_workers=args.num_workers, collate_fn=collate,
                      drop_last=True, persistent_workers=False)


def accumulation_steps(args) -> int:
    per_step = args.per_device_batch * misc.get_world_size()
    if args.batch_size % per_step:
        raise UserError(f'--batch-size {args.batch_size} is not a multiple of --per-device-batch x world size '
                        f'= {per_step}')
    return args.batch_size // per_step


class VLStep(engine.TrainStep):
    """The vision-language step for the project's one training loop: the task's loss module (which owns
    the model) on a tokenised batch."""

    def __init__(self, loss_module: nn.Module, device: torch.device):
        self.module, self.device = loss_module, device

    def prepare(self, batch):
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def __call__(self, batch):
        return self.module(batch)

    def batch_size(self, batch) -> int:
        return len(next(iter(batch.values())))


def train_one_epoch(loss_module: nn.Module, loader, state: TrainState, args, epoch: int, device, amp_dtype,
                    accum: int, tb) -> Dict[str, float]:
    """One epoch through ``engine.train_one_epoch``: accumulation to the global batch, the lr schedule
    stepped every update."""
    return engine.train_one_epoch(
        VLStep(loss_module, device), loader, state.optimizer, device, epoch, num_epochs=args.epochs,
        accum_steps=accum, on_update=lambda n: state.lr_scheduler.step(), amp_dtype=amp_dtype,
        loss_scaler=state.loss_scaler, clip_grad=args.clip_grad, tb_writer=tb, progress=not args.no_progress)


def build_state(args, task, model, device, amp_dtype, n_train: int, accum: int) -> TrainState:
    """Optimiser (METER's groups), warm-up + linear decay over every update, fp16's scaler, the best metric
    by the task's evaluator; resumed from ``--resume`` (``auto``: OUTPUT/checkpoint.pth when present)."""
    updates_per_epoch = max(1, math.ceil((n_train // (args.per_device_batch * misc.get_world_size())) / accum))
    mult = {'heads': args.lr_mult_heads, 'cross_modal': args.lr_mult_cross_modal, 'feedback': args.lr_mult_feedback}
    optimizer = build_optimizer(model, args.lr, args.weight_decay, mult)
    scheduler = warmup_linear_decay(optimizer, updates_per_epoch * args.epochs, args.warmup)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    state = TrainState(model, optimizer, scheduler, loss_scaler=scaler, best_key=task.evaluator.key,
                       higher_is_better=task.evaluator.higher_is_better)
    resume = misc.resolve_resume(args.resume, args.output_dir)
    if resume:
        state.resume(resume, misc.get_rank(), misc.get_world_size())
    return state


def log_record(args, record: Dict, tb=None, eval_stats: Optional[Dict[str, float]] = None, step: int = 0) -> None:
    """One line of OUTPUT/log.txt (and the log, and TensorBoard's eval scalars), written by rank 0 only."""
    if not misc.is_main_process():
        return
    misc.append_json_line(os.path.join(args.output_dir, 'log.txt'), record)
    _logger.info(json.dumps(record))
    for k, v in (eval_stats or {}).items():
        tb.add_scalar(f'eval/{k}', v, step)


def train_epochs(args, task, model, loss_module, state: TrainState, train_set, collate, device, amp_dtype,
                 accum: int) -> Dict[str, float]:
    """The epochs from ``state.start_epoch`` (``--stop-after``: at most that many), each evaluated and
    checkpointed (every rank's RNG gathered, the file written by rank 0); returns the last evaluation."""
    tb = None
    if misc.is_main_process():
        from torch.utils.tensorboard import SummaryWriter
        tb = SummaryWriter(os.path.join(args.output_dir, 'tensorboard'))
    stats: Dict[str, float] = {}
    state.restore_rng()
    last = args.epochs if args.stop_after is None else min(args.epochs, state.start_epoch + args.stop_after)
    for epoch in range(state.start_epoch, last):
        start = time.time()
        loader = make_loader(train_set, args, True, epoch, collate)
        train_stats = train_one_epoch(loss_module, loader, state, args, epoch, device, amp_dtype, accum, tb)
        stats = task.evaluate(model, args, device, amp_dtype, collate) if task.has_eval else {}
        state.epoch = epoch
        state.update_best(task.evaluator.score(stats))
        rngs = gather_rng_states()  # collective: every rank takes part
        if misc.is_main_process():
            state.save(os.path.join(args.output_dir, 'checkpoint.pth'), args, rngs)
        log_record(args, {'epoch': epoch + 1, 'seconds': time.time() - start,
                          **{f'train_{k}': v for k, v in train_stats.items()},
                          **{f'eval_{k}': v for k, v in stats.items()}}, tb, stats, epoch + 1)
    if tb is not None:
        tb.close()
    return stats


def run(args) -> Dict[str, float]:
    """The whole job; returns the last evaluation's metrics."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = misc.init_distributed(args)
    misc.setup_logging(misc.get_rank())
    misc.seed_everything(args.seed + misc.get_rank())
    amp_dtype = AMP_DTYPES[args.amp]
    task = build_task(args)
    model = build_model(args, task.num_answers).to(device)
    task.freeze_unused_heads(model)
    collate = TextCollate(build_tokenizer(args), args.max_text_len, task.num_answers)
    train_set = task.train_dataset(image_transform(args.image_size, True))
    accum = accumulation_steps(args)
    os.makedirs(args.output_dir, exist_ok=True)
    state = build_state(args, task, model, device, amp_dtype, len(train_set), accum)
    if args.eval_only:
        stats = task.evaluate(model, args, device, amp_dtype, collate)
        log_record(args, {'eval_only': True, 'world_size': misc.get_world_size(),
                          **{f'eval_{k}': v for k, v in stats.items()}})
        return stats
    loss_module = task.loss_module(model, args)
    if misc.is_dist():
        loss_module = DistributedDataParallel(loss_module, device_ids=[device.index] if device.type == 'cuda' else None)
    return train_epochs(args, task, model, loss_module, state, train_set, collate, device, amp_dtype, accum)


def _run_command_line(argv=None) -> None:
    run(parse_args(argv))


def main(argv=None) -> int:
    return run_cli(_run_command_line, argv, cleanup=misc.cleanup_distributed)


if __name__ == '__main__':
    raise SystemExit(main())
