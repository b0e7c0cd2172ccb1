"""pytest plugin for running timm's ``tests/test_models.py`` on the project's models only.

Loaded with ``-p project_models_plugin`` by ``tests/test_timm_suite.py`` in a subprocess. Importing it
registers the project's zoo (``import models``) and the test-only micro variants before timm's test
module is collected (its parametrisations call ``timm.list_models`` at import). The selection comes in
the environment variable ``PROJECT_TIMM_SUITE`` as JSON:

* ``models``: the model names to keep;
* ``tests``: the timm test functions to keep;
* ``exclude``: ``{test function: {model pattern: reason}}``, items deselected with their reason.

Everything else timm's file parametrises (its ~1500 models) is deselected at collection.
"""
import fnmatch
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import models  # noqa: E402,F401  (registers the project's zoo with timm)
import micro_variants  # noqa: E402,F401  (test-only micro models, see its docstring)

SELECTION = json.loads(os.environ.get('PROJECT_TIMM_SUITE', '{}'))
TIMM_MARKERS = ('base', 'forward', 'backward', 'cfg', 'cfg_nonstd', 'torchscript', 'features', 'fxforward',
                'fxbackward', 'timeout')


def pytest_configure(config):
    for name in TIMM_MARKERS:
        config.addinivalue_line('markers', f'{name}: timm test-suite marker')


def exclusion_reason(test: str, model: str):
    """The documented reason why ``test`` does not run on ``model``, or None."""
    for pattern, reason in SELECTION.get('exclude', {}).get(test, {}).items():
        if fnmatch.fnmatch(model, pattern):
            return reason
    return None


def pytest_collection_modifyitems(config, items):
    keep_models, keep_tests = set(SELECTION.get('models', ())), set(SELECTION.get('tests', ()))
    selected, deselected, excluded = [], [], []
    for item in items:
        params = getattr(getattr(item, 'callspec', None), 'params', {})
        model, test = params.get('model_name'), item.originalname
        if model not in keep_models or test not in keep_tests:
            deselected.append(item)
            continue
        reason = exclusion_reason(test, model)
        (excluded if reason else selected).append(item)
        if reason:
            print(f'[project suite] excluded {test}[{model}]: {reason}')
    config.hook.pytest_deselected(items=deselected + excluded)
    items[:] = selected


# -- results, for the caller: {nodeid: {test, model, outcome, seconds, message}} as JSON -----------------
_names = {}
_results = {}


def pytest_itemcollected(item):
    params = getattr(getattr(item, 'callspec', None), 'params', {})
    _names[item.nodeid] = (item.originalname, params.get('model_name'))


def pytest_runtest_logreport(report):
    test, model = _names.get(report.nodeid, (report.nodeid, None))
    entry = _results.setdefault(report.nodeid, dict(test=test, model=model, outcome='passed', seconds=0.0,
                                                    message=''))
    entry['seconds'] += report.duration
    if report.failed or (report.skipped and entry['outcome'] == 'passed'):
        entry['outcome'] = 'failed' if report.failed else 'skipped'
        entry['message'] = _message(report.longrepr)[:300]


def _message(longrepr) -> str:
    if isinstance(longrepr, tuple):  # a skip: (path, line, reason)
        return str(longrepr[2])
    crash = getattr(longrepr, 'reprcrash', None)
    return crash.message if crash is not None else str(longrepr)


def pytest_sessionfinish(session):
    path = os.environ.get('PROJECT_TIMM_SUITE_REPORT')
    if path:
        Path(path).write_text(json.dumps(_results, indent=1))
