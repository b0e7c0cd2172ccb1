"""One base class for the errors the user can act on: every package's error derives from it, and
main.py's command line catches only the base (one message, exit status 1, no traceback)."""
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


def test_errors_module_and_packages_do_not_import_main():
    """errors.py imports nothing; the demos and benchmarks get settings from options.py, not main.py."""
    code = ('import sys, errors; assert "torch" not in sys.modules, "errors.py pulls in torch"\n'
            'import benchmarks.data_loading, demo.controllability, demo.visualize, robustness.runner\n'
            'assert "main" not in sys.modules, "a package imported main.py"\n'
            'print(benchmarks.data_loading.recipe().aa)')
    r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == 'rand-m9-mstd0.5-inc1'
