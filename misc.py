"""Shared plumbing of main.py and engine.py: distributed helpers, logging, atomic file writes and
JSON-safe arguments.

The user-facing errors (``UserError``, ``NonFiniteLossError``) live in ``errors.py`` and are
re-exported here; the training state and its checkpoint file are ``train_state.py``'s.
"""
import datetime
import difflib
import json
import logging
import os
import random
import sys
import tempfile
from typing import Any, Dict, Iterable, List

import numpy as np
import torch
import torch.distributed as dist

from errors import NonFiniteLossError, UserError  # noqa: F401  (re-exported: misc.UserError)

_logger = logging.getLogger('absvit')


def close_matches(name: str, choices: Iterable[str], n: int = 5) -> List[str]:
    """Up to ``n`` entries of ``choices`` that look like ``name`` (difflib, case-insensitive)."""
    choices = list(choices)
    lower = {c.lower(): c for c in choices}
    found = difflib.get_close_matches(name.lower(), list(lower), n=n, cutoff=0.6)
    return [lower[f] for f in found]


# ------------------------------------------------------------------------------------------------
# Distributed helpers (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside torch.compile and DDP wrappers (what checkpoints, EMA and priors read)."""
    model = getattr(model, '_orig_mod', model)
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def resolve_resume(resume: str, output_dir) -> str:
    """``--resume``'s file: ``auto`` is OUTPUT_DIR/checkpoint.pth when it exists (a preempted or
    time-limited job restarted with the same command), else a fresh start (''). Shared by every trainer."""
    if resume != 'auto':
        return resume or ''
    auto = os.path.join(str(output_dir), 'checkpoint.pth') if output_dir else None
    found = str(auto) if auto is not None and os.path.isfile(auto) else ''
    _logger.info('--resume auto: ' + (f'resuming from {found}' if found else 'starting afresh'))
    return found


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (in place; returns it)."""
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_min(t: torch.Tensor) -> torch.Tensor:
    """Minimum of a tensor over all processes (in place; returns it)."""
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def all_gather_objects(obj: Any) -> List[Any]:
    """Every process's ``obj`` (picklable; lengths may differ), as a list indexed by rank; ``[obj]`` without
    a process group (collective: every rank must call it)."""
    if not is_dist():
        return [obj]
    out: List[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation shard of one process: indices rank, rank + world, ... (no padding, no duplicates, unlike
    ``DistributedSampler``), so per-rank sums add up to the whole set exactly once."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def init_distributed(args) -> torch.device:
    """Start the process group when launched by torchrun; set ``args.distributed``, ``rank``,
    ``world_size``, ``local_rank``, and return the device for this process.

    Backend: nccl when the device is CUDA, gloo on CPU (``--dist-backend`` overrides).
    """
    want = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if want.startswith('cuda') and not torch.cuda.is_available():
        raise UserError(f"--device {want} was asked for but CUDA is not available; use --device cpu")
    args.distributed = 'RANK' in os.environ and 'WORLD_SIZE' in os.environ and int(os.environ['WORLD_SIZE']) > 1
    args.rank = int(os.environ.get('RANK', 0))
    args.world_size = int(os.environ.get('WORLD_SIZE', 1))
    args.local_rank = int(os.environ.get('LOCAL_RANK', 0))
    if want.startswith('cuda'):
        device = torch.device('cuda', args.local_rank if args.distributed else torch.device(want).index or 0)
        torch.cuda.set_device(device)
    else:
        device = torch.device(want)
    if args.distributed:
        backend = args.dist_backend or ('nccl' if device.type == 'cuda' else 'gloo')
        args.dist_backend = backend
        kwargs = {'device_id': device} if backend == 'nccl' else {}
        dist.init_process_group(backend=backend, init_method=args.dist_url,
                                timeout=datetime.timedelta(minutes=args.dist_timeout), **kwargs)
        args.rank, args.world_size = dist.get_rank(), dist.get_world_size()
    return device


def cleanup_distributed() -> None:
    if is_dist():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------
# Logging: rank 0 logs INFO to stdout; other ranks only warnings.

def setup_logging(rank: int = 0, level: int = logging.INFO) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, '_absvit', False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stdout)
    handler._absvit = True
    prefix = '' if rank == 0 else f'[rank {rank}] '
    handler.setFormatter(logging.Formatter(prefix + '%(message)s'))
    root.addHandler(handler)
    root.setLevel(level if rank == 0 else logging.WARNING)


def append_json_line(path: str, record: Dict[str, Any]) -> None:
    with open(path, 'a') as f:
        f.write(json.dumps(record, default=_json_default) + '\n')


def _json_default(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, torch.Tensor):
        return o.item() if o.numel() == 1 else o.tolist()
    return str(o)


def format_seconds(s: float) -> str:
    return str(datetime.timedelta(seconds=int(round(s))))


# ------------------------------------------------------------------------------------------------
# Seeds and files.

def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)


def save_atomic(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``:
    a reader (or a run killed mid-write) sees the old file or the new one, never a torn one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def plain_args(args) -> Dict[str, Any]:
    """``vars(args)`` with only JSON/weights_only-safe values (tuples become lists, paths strings; mappings
    such as ``--model-kwargs`` stay mappings of such values)."""
    return {k: _plain(v) for k, v in vars(args).items()}


def _scalar(v: Any) -> bool:
    return isinstance(v, (int, float, str, bool)) or v is None


def _plain(v: Any) -> Any:
    if _scalar(v):
        return v
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (tuple, list)):
        return [x if _scalar(x) else str(x) for x in v]
    return str(v)
