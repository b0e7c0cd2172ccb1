"""Every fast path gives what the plain path gives (CPU, seconds each unless marked slow).

* the naive reference implementation (``benchmarks/naive_absvit.py``: full qkv of td, unfused
  attention, variational loss in every forward) loads the project's state_dict and matches its
  logits, variational loss and gradients (fp32, 1e-5 relative), and reproduces the release's own
  outputs (``../shared/golden``), which makes it an independent check of ``models.AbSViT``;
* fused SDPA == explicit softmax attention (fp32, 1e-5);
* ``torch.compile``: whole-graph capture (``fullgraph=True``) of the model and of the training
  loss, forward and backward (``aot_eager`` backend, fp32 1e-5), and one tiny inductor case (slow);
* bf16 autocast: stated looser tolerance (3e-2 relative L2 on logits, 5e-2 on gradients);
* grad checkpointing: equal gradients (fp32, 1e-5); fused AdamW == foreach AdamW (1e-6);
* channels-last input: accepted and equal -- it does not speed up a ViT (one patchify conv, then
  (B, N, C) tokens), so it is not a fast path here;
* no host sync in the training step (CUDA only, skipped without a GPU).
"""
import shutil

import pytest
import timm
import torch

import models  # noqa: F401
from benchmarks.naive_absvit import NaiveAbSViT, naive_like
from conftest import golden
from losses import AbSLoss

RTOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference relative to the reference's max magnitude."""
    a, b = a.detach().float(), b.detach().float()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def small_absvit(global_pool='token', **kwargs):
    """A 3-block AbSViT at 32 px whose top-down path changes the result visibly (decoders x8, head
    x20, as the golden file does)."""
    m = timm.create_model('absvit_tiny_patch16_224', img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4,
                          num_classes=10, global_pool=global_pool, **kwargs)
    with torch.no_grad():
        for d in m.decoders:
            d.linear.weight.mul_(8)
            d.linear2.weight.mul_(8)
        m.head.weight.mul_(20)
    return m


def batch(n=4, size=32, classes=10):
    return torch.randn(n, 3, size, size), torch.randint(0, classes, (n,))


def train_outputs(model, x, y, **call):
    """(output, loss, grads) of one training forward + backward with the project's criterion."""
    model.zero_grad(set_to_none=True)
    out = model(x, return_aux=True, **call)
    loss = AbSLoss(torch.nn.CrossEntropyLoss())(out, y)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, loss, grads


def assert_same_training(a, b, rtol=RTOL):
    (oa, la, ga), (ob, lb, gb) = a, b
    for pa, pb in zip(oa.pass_logits, ob.pass_logits):
        assert rel_err(pa, pb) <= rtol
    assert rel_err(oa.var_loss, ob.var_loss) <= rtol
    assert rel_err(la, lb) <= rtol
    assert ga.keys() == gb.keys()
    worst = max(ga, key=lambda n: rel_err(ga[n], gb[n]))
    assert rel_err(ga[worst], gb[worst]) <= rtol, worst


# -------------------------------------------------------------------------------------------------
# the naive reference

@pytest.mark.parametrize('pool', ['token', 'avg'])
def test_naive_reference_matches_project_model(pool):
    model = small_absvit(pool)
    naive = naive_like(model)
    assert isinstance(naive, NaiveAbSViT)
    x, y = batch()
    assert_same_training(train_outputs(naive, x, y), train_outputs(model, x, y))
    model.eval()
    naive.eval()
    with torch.no_grad():
        assert rel_err(naive(x), model(x)) <= RTOL


def test_naive_reference_has_the_release_state_dict_for_every_absvit():
    """Same keys and shapes as the project's model for every registered AbSViT (meta device); the naive
    reference implements the AbS mode, so variants registered in another mode (the tests' micro variants)
    are not its business."""
    names = [n for n in timm.list_models('absvit_*')]
    assert names
    for name in names:
        with torch.device('meta'):
            model = timm.create_model(name)
        if model.td_mode != 'abs':
            continue
        naive = naive_like(model)
        a = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        b = {k: tuple(v.shape) for k, v in naive.state_dict().items()}
        assert a == b, name


@pytest.mark.parametrize('entry', ['micro_cls', 'micro_gap'])
def test_naive_reference_reproduces_the_release(entry):
    g = golden('absvit_release_micro.pt')[entry]
    c = g['config']
    naive = NaiveAbSViT(img_size=c['img_size'], patch_size=c['patch_size'], in_chans=3, num_classes=c['num_classes'],
                        global_pool=c['global_pool'], embed_dim=c['embed_dim'], depth=c['depth'],
                        num_heads=c['num_heads'], mlp_ratio=c['mlp_ratio'], qkv_bias=c['qkv_bias'])
    naive.load_state_dict(g['state_dict'], strict=True)
    naive.eval()
    with torch.no_grad():
        assert rel_err(naive(g['x']), g['logits_eval']) <= RTOL
    naive.train()
    out = naive(g['x'], return_aux=True)
    loss = AbSLoss(torch.nn.CrossEntropyLoss())(out, g['y'])
    loss.backward()
    assert rel_err(out.pass_logits[0], g['logits_pass1']) <= RTOL
    assert rel_err(out.pass_logits[1], g['logits_pass2']) <= RTOL
    assert rel_err(out.var_loss, g['var_loss_sum']) <= RTOL
    assert rel_err(loss, g['loss']) <= RTOL
    for n, p in naive.named_parameters():
        assert rel_err(p.grad, g['grads'][n]) <= RTOL, n


# -------------------------------------------------------------------------------------------------
# fused attention, checkpointing, optimizer, memory format

def test_fused_sdpa_equals_explicit_attention():
    """The default path uses F.scaled_dot_product_attention in both passes; with record_weights
    (and timm's fused_attn off) every attention is the explicit softmax(q k^T) v."""
    model = small_absvit()
    x, y = batch()
    fused = train_outputs(model, x, y)
    attns = [m for m in model.modules() if hasattr(m, 'record_weights')]
    assert len(attns) == len(model.blocks)
    for m in attns:
        m.record_weights, m.fused_attn = True, False
    explicit = train_outputs(model, x, y)
    assert all(m.attn_weights is not None for m in attns)  # really took the explicit path
    assert_same_training(fused, explicit)


def test_grad_checkpointing_gives_equal_gradients():
    model = small_absvit()
    x, y = batch()
    plain = train_outputs(model, x, y)
    model.set_grad_checkpointing(True)
    assert_same_training(train_outputs(model, x, y), plain)


def test_fused_adamw_equals_foreach():
    """Three AdamW steps on the model's parameters with the same (random, well-conditioned)
    gradients. Model gradients are not used: some are ~0 by construction (the key bias of every
    attention cannot change a softmax), and Adam turns their rounding noise into +-lr steps."""
    params = {}
    for impl in ('foreach', 'fused'):
        torch.manual_seed(0)
        model = small_absvit()
        try:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05,
                                    **({'fused': True} if impl == 'fused' else {'foreach': True}))
        except RuntimeError as e:  # pragma: no cover - torch builds without a CPU fused kernel
            pytest.skip(f'fused AdamW unavailable on CPU: {e}')
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
            opt.zero_grad(set_to_none=True)
        params[impl] = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n in params['fused']:
        assert rel_err(params['fused'][n], params['foreach'][n]) <= 1e-6, n


def test_channels_last_input_is_equal():
    model = small_absvit().eval()
    x, _ = batch()
    with torch.no_grad():
        assert rel_err(model(x.to(memory_format=torch.channels_last)), model(x)) <= 1e-6


def test_bf16_autocast_is_close():
    """bf16 autocast vs fp32: 3e-2 relative L2 on the logits and the loss, 5e-2 on the gradients
    (bf16 keeps 8 bits of mantissa; measured here about 0.5% on the logits)."""
    model = small_absvit()
    x, y = batch(8)
    ref = train_outputs(model, x, y)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        model.zero_grad(set_to_none=True)
        out = model(x, return_aux=True)
        loss = AbSLoss(torch.nn.CrossEntropyLoss())(out, y)
    loss.backward()
    assert out.logits.dtype == torch.bfloat16
    for a, b in zip(out.pass_logits, ref[0].pass_logits):
        assert rel_l2(a, b) <= 3e-2
    assert rel_l2(out.var_loss, ref[0].var_loss) <= 3e-2
    assert rel_l2(loss, ref[1]) <= 3e-2
    grads = ref[2]
    g_all = torch.cat([p.grad.flatten() for n, p in model.named_parameters()])
    r_all = torch.cat([grads[n].flatten() for n, _ in model.named_parameters()])
    assert rel_l2(g_all, r_all) <= 5e-2


# -------------------------------------------------------------------------------------------------
# torch.compile

def test_compile_whole_graph_train_step_equal():
    """The model and the training loss compile without a graph break (fullgraph=True), and the
    compiled forward + backward equals eager. Backend aot_eager: dynamo capture + AOTAutograd
    (the graphs inductor would compile) without C++ code generation, so it runs in seconds."""
    torch._dynamo.reset()
    model = small_absvit()
    x, y = batch()
    eager = train_outputs(model, x, y)
    crit = AbSLoss(torch.nn.CrossEntropyLoss())

    @torch.compile(backend='aot_eager', fullgraph=True)
    def loss_fn(x, y):
        out = model(x, return_aux=True)
        return out, crit(out, y)

    model.zero_grad(set_to_none=True)
    out, loss = loss_fn(x, y)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    assert_same_training((out, loss, grads), eager)


def _has_c_compiler() -> bool:
    return any(shutil.which(c) for c in ('cc', 'gcc', 'clang', 'g++', 'c++'))


@pytest.mark.slow
@pytest.mark.skipif(not _has_c_compiler(), reason='inductor needs a C/C++ compiler on the CPU; none found')
def test_compile_inductor_inference_equal():
    """One tiny inductor case (CPU code generation takes about 20 s on a 2-core machine; a train
    step with backward takes minutes, which is why the train-step test above uses aot_eager)."""
    torch._dynamo.reset()
    model = timm.create_model('absvit_tiny_patch16_224', img_size=16, patch_size=8, embed_dim=32, depth=1,
                              num_heads=2, num_classes=10).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model)(x)
    assert rel_err(out, ref) <= 1e-4  # inductor may reorder reductions


# -------------------------------------------------------------------------------------------------
# no host syncs (needs CUDA)

@pytest.mark.skipif(not torch.cuda.is_available(), reason='host-sync detection needs CUDA (no GPU here)')
def test_train_step_has_no_host_sync():
    from benchmarks.throughput import Config, Runner
    runner = Runner('absvit_tiny_patch16_224', Config('train', 'bf16', 'off', False), 4, 64, torch.device('cuda'))
    runner.step()  # first step allocates optimizer state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        runner.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
