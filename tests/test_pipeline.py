"""main.py / engine.py: short end-to-end runs (AbSViT and ViT), config files and recipes, --eval with
release-format checkpoints, --finetune, and every failure behaviour of the pipeline."""
import argparse
import os
import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import yaml
from torch.utils.data import DataLoader, TensorDataset

import engine
import losses
import main
import misc
import models
from misc import UserError
from test_pipeline_helpers import QUICK, make_folder_dataset, needs_fmnist, read_log, run_main

#: every model the project registers; of the IDA heads (one code path on any backbone) only the small ones,
#: since the Swin-L/B, ResNet-101 and AbSViT-S versions at 384-448 px take minutes each on a CPU
ZOO = sorted(n for n in timm.list_models() if timm.models.model_entrypoint(n).__module__.startswith('models.')
             and not (n.startswith('ida_') and not n.endswith(('_test_resnet', '_absvit_micro_patch8_64'))))

CPU = torch.device('cpu')

def cli(*argv):
    return main.cli([str(a) for a in argv])


# ------------------------------------------------------------------------------------------------
# End-to-end runs.

@needs_fmnist
@pytest.mark.slow
def test_absvit_end_to_end_with_config_file(tmp_path):
    out = tmp_path / 'run'
    cfg = tmp_path / 'quick.yaml'
    cfg.write_text(f'model: absvit_micro_patch4_28_gap\nepochs: 1\ntrain-limit: 256\nval_limit: 128\n'
                   f'batch_size: 64\noutput_dir: {out}\n')
    r = run_main('--config', cfg, '--batch-size', 32, '--no-progress')
    assert r.returncode == 0, r.stderr
    assert 'world size 1' in r.stdout
    (rec,) = read_log(out)
    assert rec['epoch'] == 0 and rec['world_size'] == 1 and rec['test_n'] == 128
    for key in ('train_loss', 'train_sup_loss', 'train_var_loss', 'train_lr', 'test_acc1', 'test_acc5', 'test_loss'):
        assert isinstance(rec[key], float), key
    # the command line (batch 32) beat the config (64): 256 / 32 = 8 steps
    args = (out / 'args.yaml').read_text()
    assert 'batch_size: 32' in args and 'epochs: 1' in args
    ckpt = torch.load(out / 'checkpoint.pth', map_location='cpu', weights_only=True)
    assert {'model', 'optimizer', 'lr_scheduler', 'epoch', 'rng', 'args'} <= set(ckpt) and ckpt['epoch'] == 0
    for name in ('checkpoint.pth', 'best_model.pth'):
        model = timm.create_model('absvit_micro_patch4_28_gap')
        assert "'model'" in models.load_weights(model, str(out / name))
    assert any(p.name.startswith('events.out.tfevents') for p in (out / 'tensorboard').iterdir())
    assert not list(out.glob('.*.tmp'))


@needs_fmnist
@pytest.mark.slow
def test_vit_with_ema_mixup_then_eval_ema(tmp_path, capsys):
    out = tmp_path / 'vit'
    rc = cli('--model', 'vit_micro_patch4_28_gap', *QUICK, '--output_dir', out, '--model-ema',
             '--model-ema-decay', 0.9, '--model-ema-eval', '--mixup', 0.8, '--cutmix', 1.0, '--smoothing', 0.1,
             '--reprob', 0.25, '--drop-path', 0.1, '--repeated-aug')
    assert rc == 0, capsys.readouterr().err
    (rec,) = read_log(out)
    assert 'train_var_loss' not in rec and 'test_ema_acc1' in rec
    model = timm.create_model('vit_micro_patch4_28_gap')
    assert "'model_ema'" in models.load_weights(model, str(out / 'checkpoint.pth'), use_ema=True)

    rc = cli('--model', 'vit_micro_patch4_28_gap', '--eval', '--resume', out / 'checkpoint.pth', '--eval-ema',
             '--val-limit', 128, '--batch-size', 32, '--output_dir', out, '--no-progress')
    assert rc == 0, capsys.readouterr().err
    ev = read_log(out)[-1]
    assert ev['mode'] == 'eval' and "'model_ema'" in ev['weights']
    assert ev['test_acc1'] == pytest.approx(rec['test_ema_acc1']) and ev['test_n'] == 128
    assert "'model_ema' weights" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# Arguments.

def test_recipes_config_file_and_command_line_precedence(tmp_path):
    a = main.parse_args([])
    assert (a.data_set, a.model, a.mixup, a.model_ema, a.aa) == ('FMNIST', 'absvit_micro_patch4_28_gap', 0.0, False,
                                                                 'none')
    b = main.parse_args(['--data-set', 'IMNET'])
    assert (b.opt, b.lr, b.lr_base_size, b.weight_decay, b.sched, b.warmup_epochs, b.epochs, b.drop_path) == \
        ('adamw', 5e-4, 512, 0.05, 'cosine', 5, 300, 0.1)
    assert (b.aa, b.color_jitter, b.reprob, b.mixup, b.cutmix, b.smoothing) == \
        ('rand-m9-mstd0.5-inc1', 0.4, 0.25, 0.8, 1.0, 0.1)
    assert b.repeated_aug and b.model_ema and b.model_ema_decay == 0.99996 and b.clip_grad is None
    assert main.parse_args(['--data-set', 'IMNET', '--no-model-ema', '--drop-path', '0.2']).model_ema is False

    cfg = tmp_path / 'c.yaml'
    cfg.write_text('data_set: IMNET\nepochs: 7\nbatch-size: 16\nlr: "1e-3"\nmixup: 0.0\nmodel_ema: false\n')
    c = main.parse_args(['--config', str(cfg), '--epochs', '2'])
    assert (c.data_set, c.epochs, c.batch_size, c.lr, c.mixup, c.model_ema, c.cutmix) == \
        ('IMNET', 2, 16, 1e-3, 0.0, False, 1.0)

    cfg.write_text('batch_szie: 3\n')
    with pytest.raises(UserError, match="unknown key 'batch_szie'.*batch_size"):
        main.parse_args(['--config', str(cfg)])
    cfg.write_text('data_set: CIFAR\n')
    with pytest.raises(UserError, match='not one of'):
        main.parse_args(['--config', str(cfg)])
    with pytest.raises(UserError, match='not found'):
        main.parse_args(['--config', str(tmp_path / 'nope.yaml')])
    # values are checked as the command line checks them
    for text, why in [('epochs: 1.5', 'epochs: 1.5 is not an integer'),
                      ('model_ema: "no"', "model_ema: 'no' is not true or false"),
                      ('batch_size: true', 'batch_size: True is not an integer'),
                      ('mean: [0.5, x]', "could not convert string to float: 'x'")]:
        cfg.write_text(text + '\n')
        with pytest.raises(UserError, match=re.escape(why)):
            main.parse_args(['--config', str(cfg)])


@needs_fmnist
def test_a_runs_args_yaml_is_a_config_that_repeats_it(tmp_path):
    """OUTPUT/args.yaml (with what the run worked out: rank, world size, scaled lr, recipe) is a --config."""
    out = tmp_path / 'run'
    assert cli('--model', 'vit_micro_patch4_28_gap', *QUICK, '--output_dir', out) == 0
    again = main.parse_args(['--config', str(out / 'args.yaml')])
    first = yaml.safe_load((out / 'args.yaml').read_text())
    for key in ('model', 'epochs', 'train_limit', 'batch_size', 'lr', 'seed', 'mixup', 'smoothing'):
        assert getattr(again, key) == first[key], key


def test_model_kwargs_reach_the_model_from_the_command_line_and_a_config(tmp_path):
    args = main.parse_args(['--model-kwargs', 'patch_size=8', 'depth=2'])
    assert args.model_kwargs == {'patch_size': 8, 'depth': 2}
    model = main.create_model(args, 10)
    assert model.patch_embed.patch_size == (8, 8) and len(model.blocks) == 2
    torch.save({'args': misc.plain_args(args)}, tmp_path / 'a.pth')  # as checkpoints record them
    assert torch.load(tmp_path / 'a.pth', weights_only=True)['args']['model_kwargs'] == {'patch_size': 8, 'depth': 2}
    cfg = tmp_path / 'k.yaml'
    cfg.write_text('model_kwargs: {patch_size: 8}\n')
    assert main.create_model(main.parse_args(['--config', str(cfg)]), 10).patch_embed.patch_size == (8, 8)
    assert main.parse_args([]).model_kwargs == {}
    with pytest.raises(UserError, match='img_size.*--input-size'):
        main.create_model(main.parse_args(['--model-kwargs', 'img_size=64']), 10)
    with pytest.raises(UserError, match='does not take --model-kwargs'):
        main.create_model(main.parse_args(['--model-kwargs', 'no_such_arg=1']), 10)


def test_shipped_configs_parse():
    configs = Path(main.__file__).parent / 'configs'
    for cfg in sorted(configs.glob('*.yaml')):
        args = main.parse_args(['--config', str(cfg)])
        assert args.model in timm.list_models(), cfg
    # the default job's config spells out exactly what `python main.py` does
    default = vars(main.parse_args(['--config', str(configs / 'default_fmnist.yaml')]))
    bare = vars(main.parse_args([]))
    assert {k: v for k, v in default.items() if k != 'config'} == {k: v for k, v in bare.items() if k != 'config'}


# ------------------------------------------------------------------------------------------------
# Evaluation of release checkpoints, fine-tuning.

@pytest.mark.slow
@pytest.mark.parametrize('name', ZOO + ['vit_tiny_patch16_224'])
def test_eval_release_format_checkpoint(name, tmp_path, monkeypatch):
    """A checkpoint as the reference release writes it ({'model', 'args': Namespace, ...}) evaluates with
    --eval --resume, and what is evaluated are exactly its weights."""
    root = make_folder_dataset(tmp_path / 'data', classes=('cat', 'dog'), per_class=1, splits=('val',))
    torch.manual_seed(123)
    ref = timm.create_model(name, num_classes=2).state_dict()
    ckpt = tmp_path / 'release.pth'
    torch.save({'model': ref, 'epoch': 299, 'args': argparse.Namespace(model=name, lr=5e-4)}, ckpt)
    evaluated = []
    real_evaluate = engine.evaluate

    def spy(loader, model, *a, **kw):
        evaluated.append(model)
        return real_evaluate(loader, model, *a, **kw)

    monkeypatch.setattr(engine, 'evaluate', spy)
    args = main.parse_args(['--data-set', 'FOLDER', '--data-path', root, '--model', name, '--eval', '--resume',
                            str(ckpt), '--batch-size', '2', '--num_workers', '0', '--output_dir', str(tmp_path / 'o'),
                            '--no-progress'])
    result = main.run(args)
    assert result['test']['n'] == 2 and "'model' weights" in result['weights']
    assert 0 <= result['test']['acc1'] <= 100 and result['test']['loss'] > 0
    (model,) = evaluated
    sd = model.state_dict()
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)
    assert read_log(tmp_path / 'o')[-1]['mode'] == 'eval'


@needs_fmnist
@pytest.mark.slow
def test_finetune_resamples_pos_embed_and_drops_head(tmp_path, capsys):
    src = timm.create_model('vit_micro_patch4_28_gap', num_classes=5)
    ckpt = tmp_path / 'vit5.pth'
    torch.save({'model': src.state_dict()}, ckpt)
    out = tmp_path / 'ft'
    rc = cli('--model', 'absvit_micro_patch4_28_gap', '--finetune', ckpt, '--input-size', 32, *QUICK,
             '--lr', 0, '--warmup-lr', 0, '--min-lr', 0, '--output_dir', out)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert 'resampled pos_embed' in captured.out and 'dropped classifier head.weight' in captured.out
    assert 'prompt' in captured.out and 'decoders.0.linear.weight' in captured.out
    sd = torch.load(out / 'checkpoint.pth', weights_only=True)['model']
    assert sd['pos_embed'].shape == (1, 1 + 8 * 8, 64) and sd['head.weight'].shape == (10, 64)
    assert torch.equal(sd['blocks.2.mlp.fc1.weight'], src.state_dict()['blocks.2.mlp.fc1.weight'])  # lr 0


# ------------------------------------------------------------------------------------------------
# Failure behaviour: one clear message, exit status 1, no traceback.

def _error(capsys):
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    return err


def test_unknown_model_lists_close_matches(capsys):
    assert cli('--model', 'absvit_smal_patch16_224', '--output_dir', '') == 2
    err = _error(capsys)
    assert "unknown model 'absvit_smal_patch16_224'" in err and 'absvit_small_patch16_224' in err
    assert cli('--model', 'vit_micro_patch4_28_gap', '--td-mode', 'qkv', '--output_dir', '') == 2
    assert '--td-mode applies to top-down' in _error(capsys)


def test_td_mode_reaches_the_model():
    args = main.parse_args(['--td-mode', 'feedback'])
    model = main.create_model(args, 10)
    assert model.td_mode == 'feedback' and model.prompt is None
    assert main.create_model(main.parse_args([]), 10).td_mode == 'abs'


@needs_fmnist
def test_batch_size_larger_than_dataset(capsys):
    assert cli('--train-limit', 20, '--batch-size', 32, '--val-limit', 8, '--output_dir', '', '--no-progress') == 2
    assert '--batch-size 32 is larger than the 20 training samples' in _error(capsys)


def test_missing_dataset(tmp_path, capsys):
    assert cli('--data-path', tmp_path / 'nothing', '--output_dir', '') == 2
    assert 'apt-get install dataset-fashion-mnist' in _error(capsys)
    assert cli('--data-set', 'IMNET', '--output_dir', '') == 2
    assert 'needs --data-path' in _error(capsys)


@pytest.mark.slow
def test_unreadable_image_names_its_path(tmp_path, capsys):
    root = make_folder_dataset(tmp_path / 'data', per_class=1)
    bad = Path(root) / 'train' / 'dog' / 'broken.jpg'
    bad.write_bytes(b'\xff\xd8 not a jpeg at all')
    rc = cli('--data-set', 'FOLDER', '--data-path', root, '--model', 'vit_micro_patch4_28_gap', '--epochs', 1,
             '--batch-size', 2, '--num_workers', 1, '--aa', 'none', '--mixup', 0, '--cutmix', 0,
             '--no-repeated-aug', '--no-model-ema', '--output_dir', '', '--no-progress')
    assert rc == 2
    err = _error(capsys)
    assert f'cannot read image file {bad}' in err and err.count('\n') == 1


def test_checkpoint_for_another_model(tmp_path, capsys):
    ckpt = tmp_path / 'vit.pth'
    torch.save({'model': timm.create_model('vit_micro_patch4_28_gap').state_dict()}, ckpt)
    assert cli('--model', 'absvit_micro_patch4_28_gap', '--eval', '--resume', ckpt, '--val-limit', 8,
               '--output_dir', '', '--no-progress') == 2
    err = _error(capsys)
    assert 'does not match AbSViT' in err and 'missing' in err and 'prompt' in err
    torch.save({'model': timm.create_model('absvit_micro_patch4_28_gap', embed_dim=32, num_heads=2).state_dict()},
               ckpt)
    assert cli('--eval', '--resume', ckpt, '--val-limit', 8, '--output_dir', '', '--no-progress') == 2
    assert 'wrong shape' in _error(capsys)
    assert cli('--eval', '--resume', tmp_path / 'none.pth', '--output_dir', '') == 2
    assert 'checkpoint not found' in _error(capsys)


@needs_fmnist
@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    class Poisoned(nn.Module):
        """The real criterion, returning NaN from its 9th call on (epoch 2, step 1)."""

        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0
            self.model_kwargs = inner.model_kwargs

        def forward(self, output, target):
            self.calls += 1
            loss = self.inner(output, target)
            return loss * float('nan') if self.calls > 8 else loss

    build = losses.build_criterion
    monkeypatch.setattr(losses, 'build_criterion', lambda *a, **k: Poisoned(build(*a, **k)))
    out = tmp_path / 'nan'
    rc = cli('--model', 'vit_micro_patch4_28_gap', '--epochs', 2, '--train-limit', 256, '--batch-size', 32,
             '--val-limit', 32, '--output_dir', out, '--no-progress')
    assert rc == 2
    err = _error(capsys)
    assert 'loss is nan at epoch 2, step 1/8' in err and 'intact' in err and str(out / 'checkpoint.pth') in err
    ckpt = torch.load(out / 'checkpoint.pth', weights_only=True)
    assert ckpt['epoch'] == 0 and all(torch.isfinite(v).all() for v in ckpt['model'].values())
    assert len(read_log(out)) == 1 and not list(out.glob('.*.tmp'))


# ------------------------------------------------------------------------------------------------
# engine.evaluate options used by the robustness evaluation.

def test_evaluate_class_mask_and_attack():
    torch.manual_seed(0)
    net = nn.Linear(4, 6)
    x = torch.randn(10, 4)
    mask = torch.tensor([1, 3, 5])
    y = net(x).detach()[:, mask].argmax(1)
    y[:3] = (y[:3] + 1) % 3  # three wrong on purpose
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    stats = engine.evaluate(loader, net, torch.device('cpu'), class_mask=mask, progress=False)
    assert stats['n'] == 10 and stats['acc1'] == pytest.approx(70.0) and stats['acc5'] == pytest.approx(100.0)
    expected = nn.functional.cross_entropy(net(x)[:, mask], y).item()
    assert stats['loss'] == pytest.approx(expected, rel=1e-5)

    calls = []

    def attack(model, images, targets):
        calls.append((torch.is_grad_enabled(), model.training, len(images)))
        return torch.zeros_like(images)

    net.train()
    stats = engine.evaluate(loader, net, torch.device('cpu'), attack=attack, progress=False)
    assert calls == [(True, False, 4), (True, False, 4), (True, False, 2)] and net.training
    zero_pred = net(torch.zeros(1, 4)).argmax(1).item()
    assert stats['acc1'] == pytest.approx(100 * (y == zero_pred).float().mean().item())


@needs_fmnist
@pytest.mark.slow
def test_speed_flags_train_the_same_weights(tmp_path, capsys):
    """--compile (aot_eager here: the graphs inductor would compile, without C++ code generation),
    --grad-checkpointing and the fused AdamW give the weights of the plain run."""
    plain, fast = tmp_path / 'plain', tmp_path / 'fast'
    common = ['--model', 'absvit_micro_patch4_28_gap', *QUICK, '--train-limit', 128]
    assert cli(*common, '--output_dir', plain) == 0
    assert cli(*common, '--output_dir', fast, '--compile', '--compile-backend', 'aot_eager',
               '--grad-checkpointing', '--fused-opt', 'on') == 0
    out = capsys.readouterr()
    assert 'adamw (fused)' in out.out + out.err and 'torch.compile (aot_eager)' in out.out + out.err
    a = torch.load(plain / 'checkpoint.pth', weights_only=True)['model']
    b = torch.load(fast / 'checkpoint.pth', weights_only=True)['model']
    assert a.keys() == b.keys()  # no _orig_mod. prefixes from torch.compile
    for k in a:
        assert (a[k] - b[k]).abs().max() <= 1e-4 * a[k].abs().max().clamp_min(1.0), k
    assert abs(read_log(plain)[0]['test_acc1'] - read_log(fast)[0]['test_acc1']) <= 100 / 128  # <= 1 image


@needs_fmnist
def test_fused_opt_on_for_an_optimizer_without_one(capsys):
    assert cli('--model', 'vit_micro_patch4_28_gap', '--opt', 'sgd', '--fused-opt', 'on', *QUICK,
               '--output_dir', '') == 2
    assert 'no fused version of --opt sgd' in _error(capsys)


# -------------------------------------------------------------------------------------------------
# the engine reads losses back to the host only every ``check_every`` steps

class _HostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts reads of a tensor value by the host (``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()``
    all dispatch to ``aten._local_scalar_dense``): on a GPU each one is a device sync."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        return func(*args, **(kwargs or {}))


def _tiny_training(n_batches=12, poison_at=None):
    torch.manual_seed(0)
    model = timm.create_model('vit_micro_patch4_28_gap', num_classes=3, embed_dim=16, depth=1, num_heads=2)
    criterion = losses.build_criterion(argparse.Namespace(smoothing=0.1), model, False)
    if poison_at is not None:
        inner, calls = criterion, [0]

        class Poisoned(nn.Module):
            model_kwargs = {}
            last_terms = {}

            def forward(self, output, target):
                calls[0] += 1
                loss = inner(output, target)
                return loss * float('nan') if calls[0] == poison_at + 1 else loss
        criterion = Poisoned()
    x, y = torch.randn(4 * n_batches, 1, 28, 28), torch.randint(0, 3, (4 * n_batches,))
    # the batches as a list: a DataLoader iterator reads one seed from the host generator when it starts
    loader = list(DataLoader(TensorDataset(x, y), batch_size=4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # SGD: reads nothing back itself
    return model, criterion, loader, optimizer


def test_train_epoch_reads_losses_back_only_every_check_every_steps():
    stats = {}
    for every in (1, 5):
        model, criterion, loader, optimizer = _tiny_training()
        with _HostReads() as mode:
            stats[every] = engine.train_one_epoch(engine.ClassificationStep(model, criterion, CPU), loader, optimizer,
                                                  CPU, 0, check_every=every, progress=False)
        checks = -(-len(loader) // every)  # every ``every`` steps and after the last one
        # one scalar read (the first-bad-step index, the sync point) per check and none in between
        assert mode.reads == checks, (every, mode.reads)
    # the same training whatever the reading interval; the means are over all 12 steps
    assert stats[1]['loss'] == pytest.approx(stats[5]['loss'], rel=1e-6)
    model, criterion, loader, optimizer = _tiny_training()
    direct = []
    for xb, yb in loader:  # an independent loop: the mean of the per-step losses
        loss = criterion(model(xb), yb)
        direct.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert stats[5]['loss'] == pytest.approx(sum(direct) / len(direct), rel=1e-6)


def test_nonfinite_loss_found_at_the_next_check_names_the_first_bad_step():
    model, criterion, loader, optimizer = _tiny_training(poison_at=6)  # the 7th step is bad
    with pytest.raises(engine.misc.NonFiniteLossError, match=r'loss is nan at epoch 1, step 7/12'):
        engine.train_one_epoch(engine.ClassificationStep(model, criterion, CPU), loader, optimizer, CPU, 0,
                               check_every=5, progress=False)
    # check_every=1 (CPU's default) stops before the bad step touches the weights
    model, criterion, loader, optimizer = _tiny_training(poison_at=6)
    with pytest.raises(engine.misc.NonFiniteLossError, match='step 7/12'):
        engine.train_one_epoch(engine.ClassificationStep(model, criterion, CPU), loader, optimizer, CPU, 0,
                               progress=False)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_accumulated_steps_update_as_one_step_on_the_whole_batch():
    """accum_steps=2 over batches of 4 gives the update of one step on the batches of 8 they make (the mean
    loss's gradient), and on_update counts updates, not steps."""
    model, criterion, loader, optimizer = _tiny_training()
    updates = []
    engine.train_one_epoch(engine.ClassificationStep(model, criterion, CPU), loader, optimizer, CPU, 1,
                           accum_steps=2, on_update=updates.append, progress=False)
    assert updates == [7, 8, 9, 10, 11, 12]  # epoch 1 of 6 updates per epoch
    whole, criterion, _, optimizer = _tiny_training()
    for (xa, ya), (xb, yb) in zip(loader[::2], loader[1::2]):
        optimizer.zero_grad()
        criterion(whole(torch.cat([xa, xb])), torch.cat([ya, yb])).backward()
        optimizer.step()
    for (name, p), q in zip(model.named_parameters(), whole.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_busy_fraction_from_proc_stat_lines():
    # cpu user nice system idle iowait irq softirq steal: 100 ticks pass, 60 of them idle or iowait
    before = 'cpu  1000 0 500 8000 100 0 0 0 0 0'
    after = 'cpu  1030 0 510 8050 110 0 0 0 0 0'
    assert main._busy_fraction(before, after) == pytest.approx(0.4)
    assert main._busy_fraction(before, before) == 0.0  # no ticks: not busy


def test_unwrap_reaches_the_model_inside_torch_compile():
    model = nn.Linear(2, 2)
    assert engine.unwrap_model(torch.compile(model)) is model and engine.unwrap_model(model) is model
