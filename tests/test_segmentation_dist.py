"""``torchrun ... segmentation/train.py CONFIG --launcher pytorch`` on CPU: two gloo processes through
mmengine's Runner, the data sharded between them and the weights kept equal by DDP."""
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip('mmseg', reason='MMSegmentation (onedl-mmsegmentation) is not installed')

from conftest import ROOT  # noqa: E402
from segmentation.synthetic import write_ade20k  # noqa: E402
from test_pipeline_helpers import env_one_thread  # noqa: E402

pytestmark = pytest.mark.filterwarnings('ignore::UserWarning')

# a hook each rank runs after training: the sum of its parameters (equal across ranks if DDP synced them)
HOOK = textwrap.dedent('''
    import torch
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS

    @HOOKS.register_module()
    class ParamChecksumHook(Hook):
        def after_train(self, runner):
            model = getattr(runner.model, 'module', runner.model)
            total = sum(p.detach().double().sum().item() for p in model.parameters())
            with open(f'{runner.work_dir}/checksum_{runner.rank}_of_{runner.world_size}.txt', 'w') as f:
                f.write(repr(total))
''')


@pytest.mark.slow
def test_two_cpu_processes_train_with_launcher_pytorch(tmp_path):
    data = write_ade20k(str(tmp_path / 'ade'), n_train=8, n_val=4)
    (tmp_path / 'checksum_hook.py').write_text(HOOK)
    config = tmp_path / 'tiny_with_checksums.py'
    config.write_text(f"_base_ = ['{ROOT / 'segmentation/configs/tiny/upernet_absvit-tiny_ade20k.py'}']\n"
                      "custom_imports = dict(imports=['segmentation', 'checksum_hook'], allow_failed_imports=False)\n"
                      "custom_hooks = [dict(type='ParamChecksumHook')]\n")
    work = tmp_path / 'work'
    env = env_one_thread()
    env['PYTHONPATH'] = f'{tmp_path}:{env.get("PYTHONPATH", "")}'
    r = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port=29633',
         str(ROOT / 'segmentation' / 'train.py'), str(config),
         '--work-dir', str(work), '--data-root', data, '--launcher', 'pytorch', '--cfg-options',
         'train_cfg.max_iters=4', 'train_cfg.val_interval=4', 'default_hooks.checkpoint.interval=4'],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    assert 'SyncBN layers become BatchNorm' in log
    sums = [float((work / f'checksum_{rank}_of_2.txt').read_text()) for rank in (0, 1)]
    assert sums[0] == sums[1]  # DDP averaged the gradients: both ranks hold the same weights
    assert 'Iter(val) [2/2]' in log  # the 4 validation images split between the two processes
    assert (work / 'iter_4.pth').is_file()
