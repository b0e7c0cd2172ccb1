"""``--launcher pytorch`` on machines without CUDA: torchrun processes on CPU, talking over gloo.

mmengine's launcher assumes one GPU per process: it calls ``torch.cuda.set_device(LOCAL_RANK)``, wraps
the model with ``device_ids=[LOCAL_RANK]`` (which DDP refuses for a CPU module) and keeps SyncBN (whose
forward needs an accelerator). On GPUs nothing here runs; on CPU ``prepare_cpu_distributed`` starts the
process group itself (mmengine then uses it) and selects ``CPUDistributedDataParallel``, so a
multi-process run can be tried, and tested, on any machine.
"""
import os

import torch
import torch.distributed as dist
from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm
from mmengine.registry import MODEL_WRAPPERS
from mmengine.logging import print_log

__all__ = ['CPUDistributedDataParallel', 'prepare_cpu_distributed']


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's DDP wrapper for a model on CPU: no ``device_ids``, and SyncBN turned into BN (per-process
    batch statistics, as on one GPU), since SyncBN's forward cannot run on a CPU tensor."""

    def __init__(self, module, device_ids=None, **kwargs):
        if any(isinstance(m, torch.nn.SyncBatchNorm) for m in module.modules()):
            print_log('CPU processes: SyncBN layers become BatchNorm (statistics per process)', logger='current')
            module = revert_sync_batchnorm(module)
        kwargs.setdefault('broadcast_buffers', False)
        super().__init__(module=module, device_ids=None, **kwargs)


def prepare_cpu_distributed(cfg) -> None:
    """For ``--launcher pytorch`` without CUDA: join torchrun's gloo process group and pick the CPU
    wrapper. Does nothing when CUDA is there or the run is not distributed."""
    if cfg.get('launcher', 'none') != 'pytorch' or torch.cuda.is_available():
        return
    if 'RANK' not in os.environ or 'WORLD_SIZE' not in os.environ:
        from errors import UserError
        raise UserError('--launcher pytorch expects to run under torchrun (RANK/WORLD_SIZE are not set): '
                        'torchrun --nproc_per_node=N segmentation/train.py CONFIG --launcher pytorch')
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    cfg.model_wrapper_cfg = dict(type='CPUDistributedDataParallel',
                                 find_unused_parameters=cfg.get('find_unused_parameters', False))
