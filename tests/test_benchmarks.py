"""The benchmark harness runs (smoke settings: micro models, one step, no timing assertions) and the
cost report's counted figures hold (parameter counts of the release, GMACs ratio <= 2.2)."""
import pytest
import timm
import torch

from benchmarks import common, data_loading, model_cost, throughput

EXPECTED_PARAMS = {
    'absvit_tiny_patch16_224': 6_602_344,
    'absvit_small_patch16_224': 25_589_992,
    'absvit_base_patch16_224': 100_724_200,
    'vit_tiny_patch16_224': 5_717_416,
}


def test_model_discovery_finds_the_project_models_and_their_twins():
    names = common.project_model_names()
    for n in ('absvit_tiny_patch16_224', 'absvit_small_patch16_224', 'absvit_base_patch16_224',
              'absvit_tiny_patch8_224_gap', 'vit_tiny_patch8_224_gap', 'absvit_micro_patch4_28_gap'):
        assert n in names
    assert 'vit_small_patch16_224' not in names  # timm's own, not the project's ...
    assert 'vit_small_patch16_224' in common.all_model_names()  # ... but a baseline of the report
    assert common.twin_of('absvit_small_patch16_224') == 'vit_small_patch16_224'
    assert common.twin_of('absvit_tiny_patch8_224_gap') == 'vit_tiny_patch8_224_gap'
    assert common.twin_of('naive:absvit_base_patch16_224') == 'vit_base_patch16_224'
    assert common.twin_of('vit_small_patch16_224') is None
    for n in names:  # every top-down model of the project has a bottom-up twin to compare with
        if common.is_top_down_name(n):
            assert common.twin_of(n) in timm.list_models(), n


@pytest.mark.parametrize('size', ['tiny', 'small', 'base'])
def test_absvit_cost_params_and_gmacs_ratio(size):
    """Counted on the meta device (no memory, no time): parameters equal the release's, inference
    GMACs <= 2.2 x the ViT's, and the naive reference costs what the release costs (about 2.5 x)."""
    name, vit = f'absvit_{size}_patch16_224', f'vit_{size}_patch16_224'
    flops, params, _ = common.count_model_flops(name, devices=('meta',))
    vit_flops, vit_params, _ = common.count_model_flops(vit, devices=('meta',))
    naive_flops, _, _ = common.count_model_flops('naive:' + name, devices=('meta',))
    assert params == EXPECTED_PARAMS[name]
    if vit in EXPECTED_PARAMS:
        assert vit_params == EXPECTED_PARAMS[vit]
    assert flops / vit_flops <= model_cost.RATIO_TARGET
    assert 2.4 <= naive_flops / vit_flops <= 2.6


@pytest.mark.parametrize('train', [False, True], ids=['inference', 'train'])
def test_flop_count_is_the_same_on_meta_and_cpu(train):
    """On the CPU attention runs as one fused kernel, on the meta device as matmuls: both count the same."""
    name = 'absvit_micro_patch4_28_gap'
    meta = common.count_model_flops(name, devices=('meta',), train=train)[0]
    assert meta == common.count_model_flops(name, devices=('cpu',), train=train)[0]


def test_attention_flops_are_counted_on_the_cpu():
    """The fused CPU attention kernel is counted as 4 * B * H * N^2 * D forward (two matmuls) and twice
    that backward, whatever torch's own formula table holds."""
    B, H, N, D = 2, 3, 17, 8
    q, k, v = (torch.randn(B, H, N, D, requires_grad=True) for _ in range(3))
    with common.FlopCounterMode(display=False, custom_mapping=common.FLOP_FORMULAS) as counter:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert counter.get_total_flops() == 4 * B * H * N * N * D
    with common.FlopCounterMode(display=False, custom_mapping=common.FLOP_FORMULAS) as counter:
        out.sum().backward()
    assert counter.get_total_flops() == 8 * B * H * N * N * D


def test_model_cost_report_smoke(tmp_path):
    out = tmp_path / 'cost.md'
    text = model_cost.main(['--models', '*micro*', '--no-naive', '--out', str(out)])
    assert out.read_text().strip() == text.strip()
    assert '`absvit_micro_patch4_28_gap`' in text and '`vit_micro_patch4_28_gap`' in text
    row = next(line for line in text.splitlines() if line.startswith('| `absvit_micro_patch4_28_gap`'))
    assert '| ok |' in row  # micro AbSViT / its ViT <= 2.2 in GMACs


def test_throughput_smoke(tmp_path):
    js = tmp_path / 'rows.json'
    text = throughput.main(['--smoke', '--profile', '--json', str(js)])
    for name in ('vit_micro_patch4_28_gap', 'absvit_micro_patch4_28_gap', 'naive:absvit_micro_patch4_28_gap'):
        assert f'`{name}`' in text
    assert 'x twin' in text and 'naive / this' in text and 'torch:' in text
    assert 'pass 2 (top-down)' in text and 'variational loss' in text  # the profile breakdown
    assert js.read_text().count('"model"') == 6  # 3 models x (train, infer)


def test_throughput_grad_ckpt_and_bf16_smoke():
    text = throughput.main(['--smoke', '--mode', 'train', '--grad-ckpt', 'on', '--precision', 'bf16', '--no-naive'])
    assert '| bf16 | off | on |' in text


def test_throughput_cpu_memory_probe():
    row = throughput.Row('absvit_micro_patch4_28_gap', throughput.Config('train', 'fp32', 'off', False), 2, 28)
    mem = throughput.cpu_peak_mib(row, 'auto', steps=1)
    assert mem is not None and mem > 0


def test_data_loading_smoke():
    text = data_loading.main(['--smoke', '--gpu-path', '--device', 'cpu'])
    assert 'project train transform' in text and 'GpuJpegLoader on cpu' in text
    assert 'CPU workers needed' in text


def test_gpu_jpeg_loader_batches_on_cpu(tmp_path):
    """The GPU-decode path's code runs on the CPU too (decode_jpeg with device='cpu')."""
    paths = data_loading.make_jpegs(str(tmp_path), 4, size=(96, 80), classes=2)
    samples = [(p, i % 2) for i, p in enumerate(paths)]
    loader = data_loading.GpuJpegLoader(samples, batch_size=4, device='cpu', workers=0, img_size=32,
                                        mixup=data_loading.mixup_fn(data_loading.recipe(), num_classes=2))
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (4, 2) and torch.allclose(y.sum(1), torch.ones(4))


@pytest.mark.parametrize('groups', [1, 8])
def test_conv_backward_flops_respect_groups(groups):
    """torch's FlopCounterMode counts a grouped conv's weight gradient as dense; ours does not."""
    conv = torch.nn.Conv2d(16, 16, 3, padding=1, groups=groups)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    with torch.utils.flop_counter.FlopCounterMode(display=False, custom_mapping=common.FLOP_FORMULAS) as fc:
        conv(x).sum().backward()
    counts = {str(k): v for k, v in fc.get_flop_counts()['Global'].items()}
    assert counts['aten.convolution_backward'] == 2 * counts['aten.convolution']


@pytest.mark.slow
def test_throughput_compiled_step_smoke():
    """The harness's compiled train step (forward + loss and the optimizer step compiled); backend
    aot_eager so that no C++ code is generated (inductor on a CPU takes minutes per model)."""
    text = throughput.main(['--smoke', '--mode', 'train', '--compile', 'step', '--compile-backend', 'aot_eager',
                            '--no-naive', '--no-twins'])
    assert '| train | fp32 | step | off |' in text


def test_posterize_workaround_gives_the_old_pillow_result():
    """Pillow 13 rejects posterize(bits=0), which timm's RandAugment (rand-m9-mstd0.5-inc1) asks
    for in ~0.16% of images; the training transform uses the old Pillow result (a black image)."""
    from datasets.transforms import _posterize_old_pillow
    from PIL import Image, ImageOps
    img = Image.new('RGB', (8, 8), (120, 30, 200))
    assert _posterize_old_pillow(img, 0).getextrema() == ((0, 0), (0, 0), (0, 0))
    for bits in (1, 4, 7):
        assert _posterize_old_pillow(img, bits).tobytes() == ImageOps.posterize(img, bits).tobytes()
    assert _posterize_old_pillow(img, 8) is img
    from datasets import build_train_transform
    # the project's training transform comes patched: patching it again finds the ops already replaced
    tf = build_train_transform(data_loading.recipe())
    ops = [op for t in tf.transforms for op in getattr(t, 'ops', []) or [] if op.name.startswith('Posterize')]
    assert ops and all(op.aug_fn is _posterize_old_pillow for op in ops)


def test_the_naive_reference_and_the_cost_target_follow_the_records_not_the_names():
    """AbSViTs (what the naive reference reimplements and what the cost target is about) are the models
    recorded as top-down over a ViT twin; the other top-down backbones get no naive row, and no
    benchmark tests a model name for a family prefix."""
    from pathlib import Path
    absvits = {n for n in common.all_model_names() if throughput.is_top_down_vit(n)}
    assert absvits == {'absvit_tiny_patch16_224', 'absvit_small_patch16_224', 'absvit_base_patch16_224',
                       'absvit_tiny_patch8_224_gap', 'absvit_micro_patch4_28_gap'}
    assert throughput.expand_models(['absvit_micro_patch4_28_gap', 'absdat_tiny'], twins=True, naive=True) == [
        'vit_micro_patch4_28_gap', 'absvit_micro_patch4_28_gap', 'naive:absvit_micro_patch4_28_gap',
        'dat_tiny', 'absdat_tiny']
    assert not throughput.is_top_down_vit('naive:absvit_micro_patch4_28_gap')
    for path in Path(throughput.__file__).parent.glob('*.py'):
        src = path.read_text()
        assert ".startswith('abs" not in src and '.startswith("abs' not in src, path
