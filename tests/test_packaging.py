"""The project is an installable package (pyproject.toml; scripts/setup.sh installs it editable into .venv):
no code outside tests edits sys.path, pyproject.toml lists every top-level module and package, its console
scripts resolve to callables, and the entry points run, as files from another folder, as modules and as
console scripts, importing the installed project."""
import ast
import fnmatch
import importlib
import importlib.metadata
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / 'pyproject.toml').read_text())
SCRIPTS = PYPROJECT['project']['scripts']


def _project_py_files():
    """Every .py file of the project outside tests/ and the virtual environments (any hidden folder)."""
    for path in sorted(ROOT.rglob('*.py')):
        rel = path.relative_to(ROOT)
        if rel.parts[0] == 'tests' or any(p.startswith('.') for p in rel.parts):
            continue
        yield rel


def _sys_path_edits(tree: ast.AST):
    """Line numbers where ``tree`` changes the import path: a method call on ``sys.path`` that mutates it,
    an assignment to it or to an item of it, ``from sys import path`` or ``site.addsitedir``."""
    def is_sys_path(node):
        return (isinstance(node, ast.Attribute) and node.attr == 'path'
                and isinstance(node.value, ast.Name) and node.value.id == 'sys')
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            if is_sys_path(f.value) and f.attr in ('insert', 'append', 'extend', 'remove', 'pop', 'clear'):
                yield node.lineno
            if f.attr == 'addsitedir' and isinstance(f.value, ast.Name) and f.value.id == 'site':
                yield node.lineno
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if is_sys_path(t) or (isinstance(t, ast.Subscript) and is_sys_path(t.value)):
                    yield node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module == 'sys' and any(a.name == 'path' for a in node.names):
            yield node.lineno


def test_the_sys_path_scan_finds_every_kind_of_edit():
    code = ('import sys, site\nsys.path.insert(0, "x")\nsys.path[0] = "x"\nsys.path += ["x"]\n'
            'sys.path = []\nsite.addsitedir("x")\nfrom sys import path\nprint(sys.path)\n')
    assert sorted(_sys_path_edits(ast.parse(code))) == [2, 3, 4, 5, 6, 7]


def test_no_code_outside_tests_edits_sys_path():
    """Entry points import the installed project (pip install -e ., done by scripts/setup.sh)."""
    found = [f'{rel}:{line}' for rel in _project_py_files()
             for line in _sys_path_edits(ast.parse((ROOT / rel).read_text(), str(rel)))]
    assert not found, f'sys.path edited at {found}: import the installed project instead'


#: the longest a function of the project may be (tests aside): what reads on one screen
MAX_FUNCTION_LINES = 60


def test_every_function_fits_on_a_screen():
    long = [f'{rel}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)'
            for rel in _project_py_files() if 'configs' not in rel.parts
            for node in ast.walk(ast.parse((ROOT / rel).read_text(), str(rel)))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f'split these into named steps: {long}'


#: the folders whose scripts the docs run as files (``python segmentation/train.py``); the others run as modules
SCRIPT_FOLDERS = ('segmentation', 'demo', 'benchmarks')


def test_no_module_in_a_script_folder_shadows_a_top_level_one():
    """``python segmentation/train.py`` puts segmentation/ first on sys.path: a ``segmentation/errors.py``
    would then be imported as the project's ``errors``."""
    top = {p.stem for p in ROOT.glob('*.py')} | {p.parent.name for p in ROOT.glob('*/__init__.py')}
    clashes = [str(p.relative_to(ROOT)) for folder in SCRIPT_FOLDERS for p in (ROOT / folder).glob('*.py')
               if p.stem in top]
    assert not clashes, f'these shadow a top-level module when their folder runs a script: {clashes}'


def test_pyproject_lists_every_top_level_module_and_package():
    """A module or package left out would be missing from the installed project (the editable install maps
    exactly these names), so a file added at the top level must be added to pyproject.toml too."""
    setuptools_cfg = PYPROJECT['tool']['setuptools']
    modules = {p.stem for p in ROOT.glob('*.py')}
    assert set(setuptools_cfg['py-modules']) == modules
    find = setuptools_cfg['packages']['find']
    packages = {'.'.join(p.parent.relative_to(ROOT).parts) for p in ROOT.rglob('__init__.py')
                if p.parent.relative_to(ROOT).parts[0] != 'tests'
                and not any(part.startswith('.') for part in p.relative_to(ROOT).parts)}
    covered = {name for name in packages if any(fnmatch.fnmatch(name, pat) for pat in find['include'])}
    assert covered == packages, f'packages outside tool.setuptools.packages.find.include: {packages - covered}'
    assert {name.split('.')[0] for name in packages} == {pat.rstrip('*') for pat in find['include']}


@pytest.mark.parametrize('name', sorted(SCRIPTS))
def test_console_script_resolves_to_a_callable(name):
    module, _, attr = SCRIPTS[name].partition(':')
    obj = importlib.import_module(module)
    for part in attr.split('.'):
        obj = getattr(obj, part)
    assert callable(obj), f'{name} = {SCRIPTS[name]} is not callable'


def test_installed_console_scripts_are_pyproject_s():
    """The environment's install is current (scripts/setup.sh reinstalls when pyproject.toml changes), and
    the installed distribution is this checkout."""
    try:
        dist = importlib.metadata.distribution('absvit')
    except importlib.metadata.PackageNotFoundError:
        pytest.fail('the project is not installed in this environment: run bash scripts/setup.sh')
    installed = {ep.name: ep.value for ep in dist.entry_points if ep.group == 'console_scripts'}
    assert installed == SCRIPTS, 'installed console scripts differ from pyproject.toml: run bash scripts/setup.sh'
    for name in SCRIPTS:
        assert (Path(sys.executable).parent / name).is_file(), f'{name} is not installed next to {sys.executable}'


def _run(cmd, cwd):
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}  # only what the install provides
    env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


#: One script of each folder whose scripts used to put the repository on sys.path themselves, run as a file
#: (the documented form); the others of a folder import the project the same way (all were checked by hand).
FILE_SCRIPTS = ['segmentation/train.py', 'demo/visualize.py', 'benchmarks/throughput.py']


@pytest.mark.slow
@pytest.mark.parametrize('script', FILE_SCRIPTS)
def test_script_runs_as_a_file_from_another_folder(script, tmp_path):
    """``python <repo>/<script> --help`` from an unrelated folder, with no PYTHONPATH: the script finds the
    installed project (its own folder comes first on sys.path: no module there may shadow a top-level one)."""
    r = _run([sys.executable, str(ROOT / script), '--help'], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'usage:' in r.stdout


@pytest.mark.slow
def test_entry_point_runs_as_a_module(tmp_path):
    r = _run([sys.executable, '-m', 'segmentation.test', '--help'], tmp_path)
    assert r.returncode == 0 and 'usage:' in r.stdout, r.stderr[-3000:]


@pytest.mark.slow
def test_console_scripts_run_and_return_the_entry_s_exit_status(tmp_path):
    """The generated wrappers exit with what the entry returns: 0 for --help; 2 and one line, no traceback,
    for a user error (``absvit-seg-train``: the ``cli`` that wraps segmentation/train.py's ``main``)."""
    bindir = Path(sys.executable).parent
    r = _run([str(bindir / 'absvit-train'), '--help'], tmp_path)
    assert r.returncode == 0 and 'usage:' in r.stdout, r.stderr[-3000:]
    r = _run([str(bindir / 'absvit-seg-train'), str(tmp_path / 'missing_config.py')], tmp_path)
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().startswith('error: config file not found'), r.stderr[-3000:]
