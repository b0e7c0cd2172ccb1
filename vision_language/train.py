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
from contextlib import nullcontext
from typing import Dict

import torch
import torch.nn as nn
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

import misc
from engine import autocast
from errors import NonFiniteLossError, UserError, run_cli
from train_state import TrainState, gather_rng_states
from vision_language.data import MAX_TEXT_LEN, TextCollate, image_transform
from vision_language.image_encoder import load_image_weights
from vision_language.model import VLConfig, VLModel
from vision_language.optim import build_optimizer, warmup_linear_decay
from vision_language.tasks import TASK_HEAD_MULT, build_task

_logger = logging.getLogger('absvit')
AMP = {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


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
    a('--amp', default='none', choices=list(AMP))
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
        if not os.path.isfile(first.config):
            raise UserError(f'config file not found: {first.config}')
        with open(first.config) as f:
            cfg = yaml.safe_load(f) or {}
        known = {a.dest for a in parser._actions}
        bad = [k for k in cfg if k.replace('-', '_') not in known]
        if bad:
            raise UserError(f'{first.config}: unknown keys {bad} (they are the command-line flags, with _ or -)')
        parser.set_defaults(**{k.replace('-', '_'): v for k, v in cfg.items()})
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


def train_one_epoch(loss_module: nn.Module, loader, state: TrainState, args, epoch: int, device, amp_dtype,
                    accum: int, tb) -> Dict[str, float]:
    loss_module.train()
    ddp = isinstance(loss_module, DistributedDataParallel)
    bar = tqdm(loader, desc=f'Epoch {epoch + 1}/{args.epochs}', dynamic_ncols=True,
               disable=args.no_progress or not misc.is_main_process())
    sums: Dict[str, float] = {}
    n = 0
    for i, batch in enumerate(bar):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        sync = (i + 1) % accum == 0 or i + 1 == len(loader)
        with (loss_module.no_sync() if ddp and not sync else nullcontext()):
            with autocast(device, amp_dtype):
                loss, terms = loss_module(batch)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f'loss is {loss.item()} at epoch {epoch + 1}, step {i + 1}')
            scaled = loss / accum
            (state.loss_scaler.scale(scaled) if state.loss_scaler is not None else scaled).backward()
        if sync:
            _update(loss_module, state, args)
        for k, v in {'loss': loss.detach(), **terms}.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        n += 1
        bar.set_postfix(loss=f'{sums["loss"] / n:.4f}', lr=f'{state.optimizer.param_groups[0]["lr"]:.2e}')
        if tb is not None and sync:
            step = state.lr_scheduler.last_epoch
            for k, v in terms.items():
                tb.add_scalar(f'train/{k}', float(v), step)
            tb.add_scalar('train/loss', loss.item(), step)
            tb.add_scalar('train/lr', state.optimizer.param_groups[0]['lr'], step)
    return {k: v / max(n, 1) for k, v in sums.items()}


def _update(loss_module, state: TrainState, args) -> None:
    params = [p for g in state.optimizer.param_groups for p in g['params']]
    if state.loss_scaler is not None:
        state.loss_scaler.unscale_(state.optimizer)
    if args.clip_grad:
        torch.nn.utils.clip_grad_norm_(params, args.clip_grad)
    if state.loss_scaler is not None:
        state.loss_scaler.step(state.optimizer)
        state.loss_scaler.update()
    else:
        state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.lr_scheduler.step()


def run(args) -> Dict[str, float]:
    """The whole job; returns the last evaluation's metrics."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = misc.init_distributed(args)
    misc.setup_logging(misc.get_rank())
    misc.seed_everything(args.seed + misc.get_rank())
    amp_dtype = AMP[args.amp]
    task = build_task(args)
    model = build_model(args, task.num_answers).to(device)
    task.freeze_unused_heads(model)
    tokenizer = build_tokenizer(args)
    collate = TextCollate(tokenizer, args.max_text_len, task.num_answers)
    train_set = task.train_dataset(image_transform(args.image_size, True))
    accum = accumulation_steps(args)
    updates_per_epoch = max(1, math.ceil((len(train_set) // (args.per_device_batch * misc.get_world_size())) / accum))
    mult = {'heads': args.lr_mult_heads, 'cross_modal': args.lr_mult_cross_modal, 'feedback': args.lr_mult_feedback}
    optimizer = build_optimizer(model, args.lr, args.weight_decay, mult)
    scheduler = warmup_linear_decay(optimizer, updates_per_epoch * args.epochs, args.warmup)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    state = TrainState(model, optimizer, scheduler, loss_scaler=scaler)
    os.makedirs(args.output_dir, exist_ok=True)
    ckpt = os.path.join(args.output_dir, 'checkpoint.pth')
    resume = ckpt if args.resume == 'auto' and os.path.exists(ckpt) else (args.resume if args.resume != 'auto' else '')
    if resume:
        state.resume(resume, misc.get_rank(), misc.get_world_size())
    loss_module = task.loss_module(model, args)
    if misc.is_dist():
        loss_module = DistributedDataParallel(loss_module, device_ids=[device.index] if device.type == 'cuda' else None)
    if args.eval_only:
        stats = task.evaluate(model, args, device, amp_dtype, collate)
        if misc.is_main_process():
            record = {'eval_only': True, 'world_size': misc.get_world_size(),
                      **{f'eval_{k}': v for k, v in stats.items()}}
            misc.append_json_line(os.path.join(args.output_dir, 'log.txt'), record)
            _logger.info(json.dumps(record))
        return stats
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
        if stats.get(task.metric) is not None:
            state.max_accuracy = max(state.max_accuracy, stats[task.metric])
        state.save(ckpt, args, gather_rng_states())
        if misc.is_main_process():
            record = {'epoch': epoch + 1, 'seconds': time.time() - start,
                      **{f'train_{k}': v for k, v in train_stats.items()}, **{f'eval_{k}': v for k, v in stats.items()}}
            misc.append_json_line(os.path.join(args.output_dir, 'log.txt'), record)
            _logger.info(json.dumps(record))
            for k, v in stats.items():
                tb.add_scalar(f'eval/{k}', v, epoch + 1)
    if tb is not None:
        tb.close()
    return stats


def _run_command_line(argv=None) -> None:
    run(parse_args(argv))


def main(argv=None) -> int:
    return run_cli(_run_command_line, argv, cleanup=misc.cleanup_distributed)


if __name__ == '__main__':
    raise SystemExit(main())
