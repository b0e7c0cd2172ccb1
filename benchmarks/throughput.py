"""Training-step and inference throughput, peak memory and MFU of chosen models.

    python benchmarks/throughput.py --smoke                       # CI: micro models, seconds
    python benchmarks/throughput.py                               # CPU default: Ti models, a few minutes
    python benchmarks/throughput.py --models absvit_small_patch16_224 --batch-size 8 --mode train infer
    # GPU (see docs/performance.md for the exact commands used there):
    python benchmarks/throughput.py --device cuda --precision bf16 --batch-size 128 \\
        --models absvit_small_patch16_224 absvit_base_patch16_224 --compile off model --steps 10 --rounds 5

Every top-down model is measured together with its bottom-up twin (``absvit_small_patch16_224`` ->
``vit_small_patch16_224``) and, for AbSViT in ``abs`` mode, the naive reference implementation
(``naive:<name>``, ``benchmarks/naive_absvit.py``) unless ``--no-twins`` / ``--no-naive``. Models are
measured **interleaved** (round-robin over ``--rounds`` rounds of ``--steps`` steps each, the median
round counts), so the ratio columns compare figures taken under the same machine load:

* ``x twin``: this model's step time / its bottom-up twin's (target for AbSViT train: <= 2.3);
* ``naive / this``: the naive reference's step time / this model's (target: >= 1.5).

A training step is forward + the project's criterion (``losses.py``) + backward + AdamW step (fused
where the device supports it) + ``zero_grad(set_to_none=True)``; an inference step is ``model(x)``
under ``torch.inference_mode()``. Nothing in the timed loop reads a value back to the host; the
device is synchronised once at the end of each round (``--check-syncs`` makes CUDA raise on any
hidden sync). FLOPs are counted with ``FlopCounterMode`` (model FLOPs: grad-checkpointing
recomputation is not counted); MFU = FLOPs / step time / the device's dense peak for the precision
(``--peak-tflops`` overrides; unknown for CPUs, so n/a there unless given).

Peak memory: CUDA: ``torch.cuda.max_memory_allocated`` during the row's steps minus what other rows
hold, plus the row's own parameters, gradients and optimizer state. CPU: peak RSS of a separate
process that builds the row and runs its steps (``VmHWM`` minus the RSS after imports; allocator
caches included), skipped with ``--no-cpu-memory`` and under ``--smoke``.

``--profile`` adds where a training step's time goes (pass 1, feedback, pass 2, variational loss,
loss + backward, optimizer) for each model, timed phase by phase with a device sync between phases.
"""
import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from timm.models import VisionTransformer

from benchmarks.common import (NAIVE_PREFIX, build_model, count_flops, criterion_for, format_machine,
                               input_size, is_top_down_name, machine_info, markdown_table, model_kwargs_for,
                               model_record, twin_of)

TRAIN_RATIO_TARGET = 2.3   # AbSViT train step / same-size ViT step
NAIVE_SPEEDUP_TARGET = 1.5  # naive reference step / AbSViT step

#: Dense peak TFLOP/s by GPU name fragment and precision (vendor datasheets, SXM parts; "fp32" is
#: the TF32 tensor-core figure when --tf32 is given, plain FP32 otherwise).
PEAK_TFLOPS = {
    'H200': {'bf16': 989.0, 'tf32': 494.5, 'fp32': 67.0},
    'H100': {'bf16': 989.0, 'tf32': 494.5, 'fp32': 67.0},
    'A100': {'bf16': 312.0, 'tf32': 156.0, 'fp32': 19.5},
}

SMOKE_MODELS = ['absvit_micro_patch4_28_gap']
CPU_DEFAULT_MODELS = ['absvit_tiny_patch16_224']


@dataclass
class Config:
    mode: str           # train | infer
    precision: str      # fp32 | bf16
    compile: str        # off | model | step
    grad_ckpt: bool


@dataclass
class Row:
    model: str
    config: Config
    batch: int
    img: int
    times: List[float] = field(default_factory=list)  # seconds per step, one per round
    flops: Optional[int] = None
    mem_mib: Optional[float] = None
    note: str = ''

    @property
    def step_s(self) -> Optional[float]:
        return statistics.median(self.times) if self.times else None


# -------------------------------------------------------------------------------------------------
# building and running one row

def sync(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def make_optimizer(model: nn.Module, device: torch.device, impl: str = 'auto') -> torch.optim.Optimizer:
    """AdamW, fused where the device supports it (``impl='auto'``), else the foreach version."""
    params = [p for p in model.parameters() if p.requires_grad]
    if impl in ('auto', 'fused'):
        try:
            return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, fused=True)
        except (RuntimeError, ValueError, TypeError):
            if impl == 'fused':
                raise
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, foreach=impl != 'for')


def autocast_ctx(device: torch.device, precision: str):
    if precision == 'bf16':
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision != 'fp32':
        raise ValueError(f'precision must be fp32 or bf16, got {precision!r}')
    return nullcontext()


class Runner:
    """One model in one configuration: ``step()`` runs one training or inference step."""

    def __init__(self, name: str, cfg: Config, batch: int, img: Optional[int], device: torch.device,
                 optimizer: str = 'auto', seed: int = 0, compile_backend: str = 'inductor'):
        torch.manual_seed(seed)
        self.compile_backend = compile_backend
        self.name, self.cfg, self.device = name, cfg, device
        self.build_kwargs = {} if img is None else {'img_size': img}
        model = build_model(name, device, **self.build_kwargs)
        if cfg.grad_ckpt:
            if not hasattr(model, 'set_grad_checkpointing') or name.startswith(NAIVE_PREFIX):
                raise NotImplementedError('no grad checkpointing')
            model.set_grad_checkpointing(True)
        self.size = input_size(model, img)
        self.x = torch.randn(batch, *self.size, device=device)
        num_classes = getattr(model, 'num_classes', 1000)
        self.y = torch.randint(0, num_classes, (batch,), device=device)
        self.model = model.train(cfg.mode == 'train')
        self.criterion = criterion_for(model)
        self.kwargs = model_kwargs_for(model)
        self.opt = make_optimizer(model, device, optimizer) if cfg.mode == 'train' else None
        self.amp = lambda: autocast_ctx(device, cfg.precision)
        self.step = self._build_step()

    def _build_step(self) -> Callable[[], None]:
        cfg, model, crit, opt, x, y, kw = self.cfg, self.model, self.criterion, self.opt, self.x, self.y, self.kwargs
        if cfg.compile not in ('off', 'model', 'step'):
            raise ValueError(f'compile must be off, model or step, got {cfg.compile!r}')
        compile_ = lambda f: torch.compile(f, backend=self.compile_backend)  # noqa: E731
        # 'step' in inference = the model (an inference step is the forward)
        fwd = compile_(model) if cfg.compile == 'model' or (cfg.compile == 'step' and cfg.mode == 'infer') else model
        if cfg.mode == 'infer':
            def infer_step():
                with torch.inference_mode(), self.amp():
                    fwd(x)
            return infer_step

        def loss_fn():
            with self.amp():
                return crit(fwd(x, **kw), y)
        opt_step = opt.step
        if cfg.compile == 'step':  # the whole step: forward + loss (+ backward via AOTAutograd), optimizer
            loss_fn = compile_(loss_fn)
            opt_step = compile_(opt.step)

        def train_step():
            loss_fn().backward()
            opt_step()
            opt.zero_grad(set_to_none=True)
        return train_step

    def static_bytes(self) -> int:
        """Parameters (+ gradients + optimizer state when training) of this row."""
        copies = 2 if self.cfg.mode == 'train' else 1
        n = sum(p.numel() * p.element_size() * copies for p in self.model.parameters())
        if self.opt is not None:
            for state in self.opt.state.values():
                n += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
        return n

    def count_flops(self) -> int:
        """FLOPs of one step (model FLOPs), counted on the meta device (fallback: this device)."""
        for dev in ('meta', self.device):
            try:
                model = build_model(self.name, dev, **self.build_kwargs) if dev == 'meta' else self.model
                x = self.x.to(dev) if dev == 'meta' else self.x
                with self.amp() if dev != 'meta' else nullcontext():
                    return count_flops(model, x, train=self.cfg.mode == 'train')[0]
            except (NotImplementedError, RuntimeError):
                continue
        return None


def run_timed(runner: Runner, steps: int, check_syncs: bool = False, clock: str = 'wall') -> float:
    """Seconds per step over ``steps`` steps; one device sync, at the end. ``clock='process'`` (CPU
    only) counts this process's CPU time instead of wall time: on a machine shared with other jobs
    it is not inflated by time spent waiting for a core (use it with ``--threads 1``, where no
    thread spins at a barrier)."""
    device = runner.device
    if clock == 'process' and device.type != 'cpu':
        raise ValueError('--clock process is for CPU runs only')
    now = time.process_time if clock == 'process' else time.perf_counter
    sync(device)
    debug = device.type == 'cuda' and check_syncs
    if debug:
        torch.cuda.set_sync_debug_mode('error')
    try:
        t0 = now()
        for _ in range(steps):
            runner.step()
    finally:
        if debug:
            torch.cuda.set_sync_debug_mode(0)
    sync(device)
    return (now() - t0) / steps


# -------------------------------------------------------------------------------------------------
# CPU peak memory: a separate process per row

def _proc_status_bytes(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process from /proc/self/status. (Not
    ``ru_maxrss``: Linux carries it over from the parent across fork + exec, so a child started by
    a big parent reports the parent's peak.)"""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024  # kB
    raise OSError(f'{field} not in /proc/self/status')


def _probe(spec: dict) -> None:
    """Child process: build the row, run warmup + steps, print peak RSS growth (MiB) as JSON."""
    base = _proc_status_bytes('VmRSS')
    cfg = Config(**spec['config'])
    r = Runner(spec['model'], cfg, spec['batch'], spec['img'], torch.device('cpu'), spec['optimizer'],
               compile_backend=spec.get('compile_backend', 'inductor'))
    for _ in range(spec['steps']):
        r.step()
    peak = _proc_status_bytes('VmHWM')
    print(json.dumps({'mem_mib': (peak - base) / 2**20}))


def cpu_peak_mib(row: Row, optimizer: str, steps: int = 2, compile_backend: str = 'inductor') -> Optional[float]:
    spec = dict(model=row.model, config=asdict(row.config), batch=row.batch, img=row.img, optimizer=optimizer,
                steps=steps, compile_backend=compile_backend)
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    try:
        out = subprocess.run([sys.executable, __file__, '--_probe', json.dumps(spec)], capture_output=True,
                             text=True, env=env, timeout=600, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])['mem_mib']
    except (subprocess.SubprocessError, ValueError, IndexError, KeyError):
        return None


# -------------------------------------------------------------------------------------------------
# where the time goes

_CLOCKS = {'wall': time.perf_counter, 'process': time.process_time}
_now = time.perf_counter  # set by main() from --clock

def _phases_topdown(model, x, y, crit, opt, amp, device) -> List[tuple]:
    """Time the phases of one AbS training step: the model's own ``forward_top_down`` marks them
    (``phase=``), the naive reference's methods are timed in the same phases."""
    marks = []
    t = [_now()]

    def mark(name):
        sync(device)
        now = _now()
        marks.append((name, now - t[0]))
        t[0] = now

    with amp():
        if hasattr(model, 'forward_top_down'):
            out = model.forward_top_down(x, var_loss=True, phase=mark)
        else:
            out = _naive_phases(model, x, mark)
        loss = crit(out, y)
    loss.backward()
    mark('loss + backward')
    opt.step()
    opt.zero_grad(set_to_none=True)
    mark('optimizer')
    return marks


def _naive_phases(model, x, mark):
    """``benchmarks/naive_absvit.py``'s forward, phase by phase."""
    from models import TopDownOutput
    tokens, _, _ = model.forward_features(x)
    logits1 = model.forward_head(tokens)
    mark('pass 1 (bottom-up)')
    td = model.feedback(model.reweight(tokens))
    mark('prior + feedback')
    tokens2, ins, outs = model.forward_features(x, td)
    logits2 = model.forward_head(tokens2)
    mark('pass 2 (top-down)')
    vloss = model.var_loss(ins, outs)
    mark('variational loss')
    return TopDownOutput(logits2, (logits1, logits2), vloss)


def _phases_plain(model, x, y, crit, opt, amp, device) -> List[tuple]:
    marks = []
    t0 = _now()
    with amp():
        loss = crit(model(x), y)
    sync(device)
    t1 = _now()
    loss.backward()
    sync(device)
    t2 = _now()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync(device)
    t3 = _now()
    return [('forward', t1 - t0), ('loss + backward', t2 - t1), ('optimizer', t3 - t2)]


def profile_phases(runner: Runner, steps: int) -> Dict[str, float]:
    """Median seconds per phase of a training step (eager; fp32 or bf16 as configured)."""
    m = runner.model.train()
    is_td = getattr(m, 'is_top_down', False) and getattr(m, 'td_mode', 'abs') == 'abs'
    fn = _phases_topdown if is_td else _phases_plain
    per = {}
    for _ in range(steps):
        for name, dt in fn(m, runner.x, runner.y, runner.criterion, runner.opt, runner.amp, runner.device):
            per.setdefault(name, []).append(dt)
    return {k: statistics.median(v) for k, v in per.items()}


# -------------------------------------------------------------------------------------------------
# the table

def _fmt(v, spec, none='n/a'):
    return none if v is None else format(v, spec)


def peak_tflops(device: torch.device, precision: str, tf32: bool, override: Optional[float]) -> Optional[float]:
    if override:
        return override
    if device.type != 'cuda':
        return None
    name = torch.cuda.get_device_name(device)
    key = 'bf16' if precision == 'bf16' else ('tf32' if tf32 else 'fp32')
    for frag, table in PEAK_TFLOPS.items():
        if frag in name:
            return table[key]
    return None


def ratios(rows: List[Row]):
    """(x twin, naive / this) for every row, from rows of the same configuration."""
    index = {(r.model, r.config.mode, r.config.precision, r.config.compile, r.config.grad_ckpt, r.batch, r.img): r
             for r in rows}
    out = {}
    for r in rows:
        key = (r.config.mode, r.config.precision, r.config.compile, r.config.grad_ckpt, r.batch, r.img)
        twin = twin_of(r.model)
        tr = index.get((twin, *key)) if twin else None
        nr = index.get((NAIVE_PREFIX + r.model, *key)) if not r.model.startswith(NAIVE_PREFIX) else None
        x_twin = r.step_s / tr.step_s if tr is not None and r.step_s and tr.step_s else None
        naive_speedup = nr.step_s / r.step_s if nr is not None and r.step_s and nr.step_s else None
        out[id(r)] = (x_twin, naive_speedup)
    return out


def table(rows: List[Row], peak: Callable[[str], Optional[float]]) -> str:
    rat = ratios(rows)
    body = []
    for r in rows:
        c = r.config
        s = r.step_s
        tflops = r.flops / s / 1e12 if (s and r.flops) else None
        p = peak(c.precision)
        mfu = tflops / p if (tflops is not None and p) else None
        x_twin, naive = rat[id(r)]
        body.append([f'`{r.model}`', c.mode, c.precision, c.compile, 'on' if c.grad_ckpt else 'off', r.batch,
                     r.img, _fmt(s and s * 1e3, '.1f'), _fmt(s and r.batch / s, '.1f'), _fmt(r.mem_mib, '.0f'),
                     _fmt(r.flops and r.flops / 1e9, '.1f'), _fmt(tflops, '.3f'), _fmt(mfu and mfu * 100, '.1f'),
                     _fmt(x_twin, '.2f', ''), _fmt(naive, '.2f', ''), r.note])
    header = ['model', 'mode', 'precision', 'compile', 'grad ckpt', 'batch', 'img', 'ms/step', 'img/s',
              'peak mem (MiB)', 'GFLOP/step', 'TFLOP/s', 'MFU %', 'x twin', 'naive / this', 'note']
    return markdown_table(header, body, align='lllllrrrrrrrrrrl')


def target_lines(rows: List[Row]) -> List[str]:
    rat = ratios(rows)
    lines = []
    for r in rows:
        if r.model.startswith(NAIVE_PREFIX) or not is_top_down_name(r.model):
            continue
        x_twin, naive = rat[id(r)]
        c = r.config
        tag = f'{r.model} {c.mode} {c.precision} compile={c.compile} ckpt={"on" if c.grad_ckpt else "off"} ' \
              f'batch {r.batch} img {r.img}'
        if x_twin is not None and c.mode == 'train':
            ok = 'MET' if x_twin <= TRAIN_RATIO_TARGET else 'MISSED'
            lines.append(f'- {tag}: step / {twin_of(r.model)} step = **{x_twin:.2f}** '
                         f'(target <= {TRAIN_RATIO_TARGET}: {ok})')
        elif x_twin is not None:
            lines.append(f'- {tag}: step / {twin_of(r.model)} step = **{x_twin:.2f}**')
        if naive is not None:
            ok = 'MET' if naive >= NAIVE_SPEEDUP_TARGET else 'MISSED'
            lines.append(f'- {tag}: naive reference step / this step = **{naive:.2f}** '
                         f'(target >= {NAIVE_SPEEDUP_TARGET}: {ok})')
    return lines


# -------------------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def is_top_down_vit(name: str) -> bool:
    """Whether model ``name`` is an AbSViT in the sense of the naive reference (``benchmarks/naive_absvit.py``)
    and of the speed and cost targets: its registration records it as top-down (``model_record``) with a
    bottom-up twin that is a timm ``VisionTransformer``. The twin is built on the meta device (no memory,
    a few milliseconds), so that the answer comes from what the models are, never from their names."""
    if name.startswith(NAIVE_PREFIX):
        return False  # the naive reference itself: it has no naive reference of its own
    record = model_record(name)
    if not record.top_down or record.twin is None:
        return False
    return isinstance(build_model(record.twin, 'meta'), VisionTransformer)


def expand_models(names: List[str], twins: bool, naive: bool) -> List[str]:
    """``names`` with, before each top-down model, its bottom-up twin (``twins``) and, after each AbSViT,
    its naive reference implementation (``naive``)."""
    out = []
    for n in names:
        twin = twin_of(n)
        if twins and twin and twin not in out:
            out.append(twin)
        if n not in out:
            out.append(n)
        if naive and is_top_down_vit(n) and NAIVE_PREFIX + n not in out:
            out.append(NAIVE_PREFIX + n)
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--models', nargs='+', help=f'timm names or naive:<absvit name> (CPU default: '
                    f'{CPU_DEFAULT_MODELS}; GPU default: absvit_small/base_patch16_224)')
    ap.add_argument('--no-twins', action='store_true', help='do not add the bottom-up twins')
    ap.add_argument('--no-naive', action='store_true', help='do not add the naive reference implementations')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--batch-size', type=int, nargs='+', help='default: 8 on CPU, 128 on GPU')
    ap.add_argument('--img-size', type=int, help="default: each model's own (224)")
    ap.add_argument('--mode', nargs='+', default=['train', 'infer'], choices=['train', 'infer'])
    ap.add_argument('--precision', nargs='+', default=None, choices=['fp32', 'bf16'],
                    help='default: fp32 on CPU, bf16 on GPU (autocast)')
    ap.add_argument('--compile', nargs='+', default=['off'], choices=['off', 'model', 'step'],
                    help='torch.compile: off, of the model, or of the whole step (forward+loss and optimizer)')
    ap.add_argument('--compile-backend', default='inductor',
                    help="torch.compile backend (inductor; aot_eager checks capture without code generation)")
    ap.add_argument('--grad-ckpt', nargs='+', default=['off'], choices=['off', 'on'])
    ap.add_argument('--steps', type=int, default=2, help='steps per round')
    ap.add_argument('--rounds', type=int, default=3, help='interleaved rounds; the median round counts')
    ap.add_argument('--warmup', type=int, default=1, help='untimed steps per row before the first round')
    ap.add_argument('--optimizer', default='auto', choices=['auto', 'fused', 'foreach', 'for'])
    ap.add_argument('--peak-tflops', type=float, help='device peak TFLOP/s for MFU (default: known GPUs)')
    ap.add_argument('--tf32', action='store_true', help='allow TF32 matmuls on CUDA for fp32')
    ap.add_argument('--threads', type=int, help='torch.set_num_threads (CPU)')
    ap.add_argument('--clock', default='wall', choices=['wall', 'process'],
                    help='CPU: time steps by wall clock or by this process\'s CPU time (robust on a shared '
                         'machine; use with --threads 1)')
    ap.add_argument('--no-cpu-memory', action='store_true', help='skip the CPU peak-memory subprocesses')
    ap.add_argument('--profile', action='store_true', help='add the per-phase breakdown of a training step')
    ap.add_argument('--check-syncs', action='store_true', help='CUDA: raise on any host sync in the timed loop')
    ap.add_argument('--smoke', action='store_true', help='CI: micro models, 1 round of 1 step, no memory probe')
    ap.add_argument('--out', help='also write the report (markdown) to this file')
    ap.add_argument('--json', help='also write the raw rows (JSON) to this file')
    ap.add_argument('--_probe', help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def _settle_defaults(args, gpu: bool) -> Tuple[List[str], List[int], List[str]]:
    """The models, batch sizes and precisions to run: the command line's, else the device's defaults
    (``--smoke``: micro models, one step, batch 2)."""
    if args.smoke:
        models_ = args.models or SMOKE_MODELS
        args.steps, args.rounds, args.warmup = 1, 1, 1
        args.batch_size = args.batch_size or [2]
        args.no_cpu_memory = True
    else:
        models_ = args.models or (['absvit_small_patch16_224', 'absvit_base_patch16_224'] if gpu
                                  else CPU_DEFAULT_MODELS)
    return models_, args.batch_size or ([128] if gpu else [8]), args.precision or (['bf16'] if gpu else ['fp32'])


def _build_group(names: List[str], cfg: 'Config', batch: int, args, device: torch.device, log):
    """One runner per model for this configuration, each built and warmed up; models that cannot run it
    are skipped with a line saying why."""
    runners: Dict[int, Runner] = {}
    group: List[Row] = []
    for name in names:
        row = Row(name, cfg, batch, args.img_size or 0)
        try:
            runner = Runner(name, cfg, batch, args.img_size, device, args.optimizer,
                            compile_backend=args.compile_backend)
        except NotImplementedError as e:
            log(f'skip {name} ({cfg}): {e}')
            continue
        row.img = runner.size[-1]
        row.flops = runner.count_flops()
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            runner.step()
        sync(device)
        log(f'{name} {cfg} batch {batch}: built + {args.warmup} warmup step(s) in {time.perf_counter() - t0:.1f}s')
        runners[id(row)] = runner
        group.append(row)
    return group, runners


def _time_group(group: List[Row], runners: Dict[int, Runner], args, device: torch.device, log) -> None:
    """Interleaved rounds over the group (so drifts of the machine hit every row alike); on a GPU also each
    row's peak memory."""
    gpu = device.type == 'cuda'
    for rnd in range(args.rounds):
        for row in group:
            runner = runners[id(row)]
            if gpu:
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            row.times.append(run_timed(runner, args.steps, args.check_syncs, args.clock))
            if gpu:
                extra = (torch.cuda.max_memory_allocated(device) - before) / 2**20
                row.mem_mib = max(row.mem_mib or 0, extra + runner.static_bytes() / 2**20)
        log(f'round {rnd + 1}/{args.rounds}: ' + ', '.join(f'{r.model} {r.times[-1] * 1e3:.0f}ms' for r in group))


def _run_grid(args, names: List[str], batches: List[int], precisions: List[str], device: torch.device, log):
    """Every (mode, precision, compile, checkpointing, batch) configuration: rows and eager phase profiles."""
    rows: List[Row] = []
    profiles: Dict[str, Dict[str, float]] = {}
    for mode, prec, comp, ckpt, batch in itertools.product(args.mode, precisions, args.compile, args.grad_ckpt,
                                                           batches):
        if mode == 'infer' and ckpt == 'on':
            continue
        cfg = Config(mode, prec, comp, ckpt == 'on')
        group, runners = _build_group(names, cfg, batch, args, device, log)
        _time_group(group, runners, args, device, log)
        if args.profile and mode == 'train':
            for row in group:
                key = f'{row.model} ({prec}, batch {batch}, img {row.img})'
                if comp == 'off' and not cfg.grad_ckpt and key not in profiles:
                    profiles[key] = profile_phases(runners[id(row)], max(args.steps, 3))
        rows.extend(group)
        runners.clear()
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    if device.type == 'cpu' and not args.no_cpu_memory:
        for row in rows:
            row.mem_mib = cpu_peak_mib(row, args.optimizer, compile_backend=args.compile_backend)
            log(f'memory {row.model} {row.config}: {_fmt(row.mem_mib, ".0f")} MiB')
    return rows, profiles


def _report(args, argv, rows: List[Row], profiles, info, precisions: List[str], device: torch.device,
            t_start: float) -> str:
    """The markdown report: the table, the targets' ratios within this run, the phase profiles."""
    peak = lambda prec: peak_tflops(device, prec, args.tf32, args.peak_tflops)  # noqa: E731
    peaks = ', '.join(f'{p}: {_fmt(peak(p), "g")}' for p in precisions)
    parts = [
        f'## Throughput ({device.type})', '',
        *(['_--smoke: a plumbing check at micro size, one step; the figures mean nothing._', ''] if args.smoke
          else []),
        format_machine(info), '',
        f'_{args.rounds} interleaved round(s) x {args.steps} step(s) per row after {args.warmup} warmup step(s); '
        f'median round; clock: {args.clock}; optimizer AdamW ({args.optimizer}); peak TFLOP/s for MFU: '
        f'{peaks}._', '',
        table(rows, peak), '',
        '**Against the targets** (ratios within this run):', '',
        *(target_lines(rows) or ['- (no top-down row with a twin or naive reference)']), '',
    ]
    if profiles:
        parts += ['### Where a training step goes (eager, phase by phase, device synced between phases)', '']
        for key, ph in profiles.items():
            total = sum(ph.values())
            parts.append(f'`{key}`: ' + ', '.join(f'{k} {v * 1e3:.0f} ms ({100 * v / total:.0f}%)'
                                                  for k, v in ph.items()) + f'; total {total * 1e3:.0f} ms')
            parts.append('')
    parts.append(f'_Total wall time {time.perf_counter() - t_start:.0f}s. Command: '
                 f'`python benchmarks/throughput.py {" ".join(sys.argv[1:] if argv is None else argv)}`_')
    return '\n'.join(parts)


def main(argv=None) -> str:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._probe:
        _probe(json.loads(args._probe))
        return ''
    global _now
    _now = _CLOCKS[args.clock]
    device = torch.device(args.device)
    if device.type == 'cuda' and args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    models_, batches, precisions = _settle_defaults(args, device.type == 'cuda')
    names = expand_models(models_, twins=not args.no_twins, naive=not args.no_naive)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    t_start = time.perf_counter()
    info = machine_info(device)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    rows, profiles = _run_grid(args, names, batches, precisions, device, log)
    text = _report(args, argv, rows, profiles, info, precisions, device, t_start)
    print(text)
    if args.out:
        Path(args.out).write_text(text + '\n')
    if args.json:
        Path(args.json).write_text(json.dumps({'machine': info, 'rows': [
            dict(model=r.model, **asdict(r.config), batch=r.batch, img=r.img, times=r.times, flops=r.flops,
                 mem_mib=r.mem_mib) for r in rows], 'profiles': profiles}, indent=1))
    return text


if __name__ == '__main__':
    main()
