"""timm's own model test suite (``tests/test_models.py`` of timm's source release) on the project's models.

``scripts/setup.sh`` extracts that file, for the installed timm, to ``<venv>/timm-tests/test_models.py``
(``TIMM_TEST_MODELS`` overrides the path); without it this test skips. A patched copy in a temporary
folder is run in a subprocess with ``tests/timm_suite/project_models_plugin.py``, which registers the
project's models and deselects every other model. The patch only classifies the project's models the
way timm classifies its own:

* the project's model modules join ``FEAT_INTER_FILTERS`` (models with ``forward_intermediates`` and
  ``features_only`` through ``FeatureGetterNet``);
* ``absvit_*``, ``fan_*`` and ``absfan_*`` join ``NON_STD_FILTERS`` next to timm's ``vit_*``: their
  features are tokens ``(B, N, C)``, not a map, so timm checks them with
  ``test_model_default_cfgs_non_std`` and skips the feature-map tests (``test_model_forward_features``)
  for them, as for its own ViTs. DAT and RVT give channel-last maps (``output_fmt = 'NHWC'``): std. IDA
  (``ida_*``) gives its backbone's last map, NCHW, whatever the backbone: std.

``EXCLUDE`` lists the (test, model) pairs that do not run, each with its reason (among them the tests timm
itself skips for the full-size IDA transformers' fixed input sizes); the test asserts that
every other pair ran and passed (``expected_tests``: 9 timm tests per ViT or FAN, 10 per RVT or IDA on a
convnet, 8 per DAT, which does not script, 9 per IDA on AbSViT, whose backbone does not script).

The default run takes the micro models (``QUICK_MODELS``: about 2 minutes on a quiet 2-core machine, 3 on a
shared one); ``PROJECT_TIMM_SUITE_ALL=1`` runs every registered model (about half an hour). For a per-model table:
``python tests/test_timm_suite.py [--all] [--models NAME ...]``.
"""
import argparse
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HELPERS = Path(__file__).resolve().parent / 'timm_suite'
#: setup.sh puts it in the environment that runs the tests (.venv, or .venv-floors for check_floors.sh)
SUITE = Path(os.environ.get('TIMM_TEST_MODELS', Path(sys.prefix) / 'timm-tests' / 'test_models.py'))

PROJECT_MODULES = ['absvit', 'dat', 'rvt', 'fan', 'ida', 'micro_variants']
NON_STD = ['absvit_*', 'fan_*', 'absfan_*']
TESTS = [
    'test_model_forward', 'test_model_backward', 'test_model_default_cfgs', 'test_model_default_cfgs_non_std',
    'test_model_forward_features', 'test_model_forward_intermediates_features', 'test_model_forward_intermediates',
    'test_model_forward_torchscript', 'test_model_forward_fx', 'test_model_backward_fx',
    'test_model_forward_fx_torchscript',
]
NOT_SCRIPTABLE = ('DAT++ is not scriptable: its neighbourhood attention chooses its tiling plan and kernels in '
                  'Python at run time (models/dat.py, NeighborhoodAttention2D.__prepare_scriptable__; '
                  'tests/test_timm_conventions.py asserts the error)')
IDA_ABSVIT_NOT_SCRIPTABLE = (
    "IDA on AbSViT is not scriptable: its backbone is AbSViT's features_only wrapper (timm's FeatureGetterNet), "
    "whose forward calls AbSViT's @torch.jit.ignore'd forward_intermediates (models/topdown.py), a signature with "
    'keyword-only arguments and **extra that TorchScript cannot call (an internal assert; tests/test_ida.py '
    'asserts it). AbSViT itself and IDA on test_resnet script, and FX-then-TorchScript runs on IDA on AbSViT '
    '(this suite checks all three)')
#: {timm test: {model pattern: why it does not run there}}.
EXCLUDE = {
    'test_model_forward_torchscript': {'dat_*': NOT_SCRIPTABLE, 'absdat_*': NOT_SCRIPTABLE,
                                       'ida_*_absvit_*': IDA_ABSVIT_NOT_SCRIPTABLE},
    'test_model_forward_fx_torchscript': {'dat_*': NOT_SCRIPTABLE, 'absdat_*': NOT_SCRIPTABLE},
}


def fx_passes_traced_bools_to_sdpa() -> bool:
    """Whether this torch's FX can trace ``scaled_dot_product_attention(is_causal=<traced bool>)``.
    timm's own ``VisionTransformer.forward`` takes ``is_causal``, which tracing makes a Proxy; torch 2.6
    (the floor) refuses it in the op's argument parser, newer releases record it."""
    import torch
    import torch.nn.functional as F

    class Probe(torch.nn.Module):
        def forward(self, x, is_causal: bool = False):
            return F.scaled_dot_product_attention(x, x, x, is_causal=is_causal)
    try:
        torch.fx.symbolic_trace(Probe())
    except TypeError:
        return False
    return True


if not fx_passes_traced_bools_to_sdpa():
    _TIMM_VIT_FX = ("timm's own VisionTransformer cannot be FX-traced on this torch: its forward's is_causal "
                    'becomes a Proxy, which scaled_dot_product_attention refuses (the zoo\'s models trace)')
    for _test in ('test_model_forward_fx', 'test_model_backward_fx', 'test_model_forward_fx_torchscript'):
        EXCLUDE.setdefault(_test, {})['vit_*'] = _TIMM_VIT_FX

#: timm skips a test ("Fixed input size model > limit.") when a model's fixed input size is above the test's
#: limit (test_models.py's MAX_*_SIZE); the full-size IDA transformers are fixed at 384 (Swin) and 448 (AbSViT-S).
TIMM_SIZE_LIMITS = {'test_model_forward': 384, 'test_model_backward': 320, 'test_model_forward_features': 256,
                    'test_model_forward_intermediates_features': 256, 'test_model_forward_intermediates': 256,
                    'test_model_forward_torchscript': 320, 'test_model_forward_fx': 256,
                    'test_model_backward_fx': 224, 'test_model_forward_fx_torchscript': 320}
FIXED_INPUT_SIZES = {'ida_*_swin_*_384': 384, 'ida_*_absvit_small_patch16_224': 448}
for _test, _limit in TIMM_SIZE_LIMITS.items():
    for _pattern, _size in FIXED_INPUT_SIZES.items():
        if _size > _limit:
            EXCLUDE.setdefault(_test, {})[_pattern] = (f'fixed input size {_size} px, above the {_limit} px limit '
                                                       'of this timm test (timm skips it)')

#: The default run (CI): every code path at micro size, with the test-only variants of
#: tests/timm_suite/micro_variants.py. PROJECT_TIMM_SUITE_ALL=1 runs every registered model.
QUICK_MODELS = ['absvit_micro_patch4_28_gap', 'absvit_micro_patch4_28_token', 'vit_micro_patch4_28_gap', 'dat_micro',
                'absdat_micro', 'absdat_micro_feedback', 'rvt_micro', 'absrvt_micro', 'absrvt_micro_maskatt',
                'fan_micro', 'absfan_micro', 'absfan_micro_qkv', 'ida_heavy_test_resnet',
                'ida_light_absvit_micro_patch8_64'] + [
    f'absvit_micro_patch4_28_gap_{m}' for m in ('qkv', 'feedback', 'maskatt', 'perceiver')]


def project_models():
    """Every name the project registers, plus the test-only micro variants."""
    sys.path[:0] = [str(ROOT), str(HELPERS)]
    import timm
    import models  # noqa: F401
    import micro_variants  # noqa: F401
    return sorted(n for n in timm.list_models() if timm.models.get_pretrained_cfg(n) is not None
                  and any(timm.models.is_model_in_modules(n, [m]) for m in PROJECT_MODULES))


def is_non_std(model: str) -> bool:
    return any(fnmatch.fnmatch(model, p) for p in NON_STD + ['vit_*'])


def expected_tests(model: str):
    """The timm tests that should run on ``model`` (the default-cfg test in its std/non-std form; the
    feature-map test only for std models), less the documented exclusions."""
    skip = {'test_model_default_cfgs', 'test_model_forward_features'} if is_non_std(model) \
        else {'test_model_default_cfgs_non_std'}
    return [t for t in TESTS if t not in skip and not any(fnmatch.fnmatch(model, p) for p in EXCLUDE.get(t, {}))]


def patched_suite(text: str) -> str:
    """timm's file with the project's models classified (see the module docstring)."""
    anchor = '\nTARGET_FWD_SIZE = MAX_FWD_SIZE'
    if anchor not in text or 'FEAT_INTER_FILTERS = [' not in text or 'NON_STD_FILTERS = [' not in text:
        raise RuntimeError(f'{SUITE} does not have the layout this harness patches (timm changed it)')
    block = (f'\n# -- added by the project\'s tests/test_timm_suite.py --\n'
             f'FEAT_INTER_FILTERS += {PROJECT_MODULES!r}\nNON_STD_FILTERS += {NON_STD!r}\n')
    return text.replace(anchor, block + anchor, 1)


def run_suite(models, workdir: Path, timeout: float = 3000) -> dict:
    """Run the patched suite on ``models``; returns the plugin's results ``{nodeid: {...}}``."""
    (workdir / 'test_models.py').write_text(patched_suite(SUITE.read_text()))
    (workdir / 'pytest.ini').write_text('[pytest]\n')
    report = workdir / 'results.json'
    env = {k: v for k, v in os.environ.items() if k not in ('GITHUB_ACTIONS', 'PYTEST_XDIST_WORKER',
                                                            'PYTEST_ADDOPTS', 'PYTEST_CURRENT_TEST')}
    env.update(PYTHONPATH=os.pathsep.join([str(HELPERS), str(ROOT)]), PROJECT_TIMM_SUITE_REPORT=str(report),
               PROJECT_TIMM_SUITE=json.dumps(dict(models=list(models), tests=TESTS, exclude=EXCLUDE)))
    cmd = [sys.executable, '-m', 'pytest', 'test_models.py', '-p', 'project_models_plugin', '-p', 'no:cacheprovider',
           '-p', 'no:xdist', '-q', '-rN', '--tb=line', '-W', 'ignore']
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    if not report.is_file():
        raise RuntimeError(f'timm suite did not run (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
    return json.loads(report.read_text())


def per_model(results: dict) -> dict:
    """{model: {test: outcome}}."""
    table = defaultdict(dict)
    for r in results.values():
        table[r['model']][r['test']] = r['outcome']
    return table


def check(results: dict, models) -> list:
    """Problems: a failed or skipped pair, a missing expected pair or an unexpected one."""
    table, problems = per_model(results), []
    for r in results.values():
        if r['outcome'] != 'passed':
            problems.append(f"{r['test']}[{r['model']}] {r['outcome']}: {r['message']}")
    for m in models:
        ran, want = set(table.get(m, {})), set(expected_tests(m))
        problems += [f'{t}[{m}] did not run' for t in sorted(want - ran)]
        problems += [f'{t}[{m}] ran but is not expected' for t in sorted(ran - want)]
    return problems


@pytest.mark.slow
def test_timm_model_suite_passes_on_project_models(tmp_path):
    if not SUITE.is_file():
        pytest.skip(f"{SUITE} is absent: scripts/setup.sh extracts timm's tests/test_models.py from timm's source "
                    'release (set TIMM_TEST_MODELS to use another copy)')
    models = project_models() if os.environ.get('PROJECT_TIMM_SUITE_ALL') else QUICK_MODELS
    if 'vit_*' in EXCLUDE.get('test_model_forward_fx', {}):
        warnings.warn(f"FX tests of timm's plain ViT variants not run: {EXCLUDE['test_model_forward_fx']['vit_*']}")
    results = run_suite(models, tmp_path)
    problems = check(results, models)
    assert not problems, '\n'.join(problems)


# -------------------------------------------------------------------------------------------------

def format_table(results: dict, models) -> str:
    table = per_model(results)
    short = {t: t.replace('test_model_', '') for t in TESTS}
    lines = ['| model | ' + ' | '.join(short[t] for t in TESTS) + ' | passed / run |',
             '|---|' + '---|' * (len(TESTS) + 1)]
    for m in models:
        row = table.get(m, {})
        cells = [row.get(t, '-') for t in TESTS]
        ok = sum(c == 'passed' for c in cells)
        ran = sum(c != '-' for c in cells)
        lines.append(f'| `{m}` | ' + ' | '.join(cells) + f' | {ok} / {ran} |')
    return '\n'.join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description='timm test_models.py on the project models, as a table')
    ap.add_argument('--all', action='store_true', help='every registered project model (default: the quick set)')
    ap.add_argument('--models', nargs='+')
    ap.add_argument('--json', help='also write the raw results here')
    args = ap.parse_args(argv)
    models = args.models or (project_models() if args.all else QUICK_MODELS)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        results = run_suite(models, Path(d))
    print(format_table(results, models))
    print(f'\n{time.perf_counter() - t0:.0f} s')
    for p in check(results, models):
        print('-', p)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == '__main__':
    main()
