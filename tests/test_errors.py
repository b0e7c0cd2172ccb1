"""One base class for the errors the user can act on: every package's error derives from it, and
every entry point runs through ``errors.run_cli``, which catches only the base (one message on stderr,
exit status 2, no traceback)."""
import subprocess
import sys

import pytest

import datasets
import errors
import main
import misc
import models
from demo.common import DemoError
from robustness.corruptions import magick, photos
from robustness.folders import LayoutError
from test_pipeline_helpers import ROOT


@pytest.mark.parametrize('cls', [misc.UserError, misc.NonFiniteLossError, datasets.DatasetError,
                                 datasets.UnreadableImageError, models.CheckpointError, LayoutError, DemoError,
                                 magick.MagickUnavailable, photos.PhotosMissing])
def test_every_user_facing_error_derives_from_the_base(cls):
    assert issubclass(cls, errors.UserFacingError)
    assert issubclass(LayoutError, datasets.DatasetError) and issubclass(LayoutError, misc.UserError)
    assert misc.UserError is errors.UserError and misc.NonFiniteLossError is errors.NonFiniteLossError


def test_cli_prints_any_user_facing_error_as_one_line(monkeypatch, capsys):
    class SubProjectError(errors.UserFacingError):
        """An error a later sub-project adds: main.cli needs no change to report it."""

    def fail(args):
        raise SubProjectError('the prompt file is missing: pass --prompts FILE')

    monkeypatch.setattr(main, 'run', fail)
    assert main.cli(['--output_dir', '']) == 2
    assert capsys.readouterr().err == 'error: the prompt file is missing: pass --prompts FILE\n'


def test_cli_does_not_hide_programming_errors(monkeypatch):
    def bug(args):
        raise ZeroDivisionError('a bug, not a user mistake')

    monkeypatch.setattr(main, 'run', bug)
    with pytest.raises(ZeroDivisionError):
        main.cli(['--output_dir', ''])


def test_run_cli_reports_the_worker_s_message_tags_the_rank_and_always_cleans_up(monkeypatch, capsys):
    cleaned = []

    def worker_error(argv):  # what a DataLoader worker's re-raised error looks like
        raise errors.UserError('Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most '
                               'recent call last):\n  File "x.py", line 1\nerrors.UserError: cannot read image a.jpg')

    monkeypatch.setenv('RANK', '3')
    assert errors.run_cli(worker_error, [], cleanup=lambda: cleaned.append(1)) == errors.USER_ERROR_EXIT == 2
    assert capsys.readouterr().err == 'error (rank 3): cannot read image a.jpg\n'
    monkeypatch.delenv('RANK')
    assert errors.run_cli(lambda argv: 5, [], cleanup=lambda: cleaned.append(2)) == 5  # an entry's own status
    assert errors.run_cli(lambda argv: None, []) == 0 and cleaned == [1, 2]


def test_errors_module_and_packages_do_not_import_main():
    """errors.py imports nothing; the demos and benchmarks get settings from options.py, not main.py."""
    code = ('import sys, errors; assert "torch" not in sys.modules, "errors.py pulls in torch"\n'
            'import benchmarks.data_loading, demo.controllability, demo.visualize, robustness.runner\n'
            'assert "main" not in sys.modules, "a package imported main.py"\n'
            'print(benchmarks.data_loading.recipe().aa)')
    r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == 'rand-m9-mstd0.5-inc1'
