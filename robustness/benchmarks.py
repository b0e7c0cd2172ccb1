"""The folder benchmarks, one row each: the single place that names them.

A folder benchmark is a folder of ImageNet class folders (``DIR/<wnid>/<image>``) whose top-1 is one line of
the report: ImageNet-A, ImageNet-R, ImageNet-Sketch. Its command-line flag (``robustness.add_args``), its
place in the evaluation plan (``runner.plan`` / ``runner.execute``) and its report line and section
(``report.markdown``) are all derived from its row of ``FOLDER_BENCHMARKS``, read when they are built, so
adding a benchmark is adding a row (plus, for a class subset, its wnid list in ``robustness/data``).

ImageNet-C is not a row: its folders hold corruptions and severities, reported per corruption with CE and
mCE, not one top-1.

This module is plain data (no torch) so that building the command-line parser stays light.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Tuple

_FLAG = re.compile(r'--[a-z][a-z0-9]*(_[a-z0-9]+)*')
_KEY = re.compile(r'[a-z][a-z0-9_]*')


@dataclass(frozen=True)
class FolderBenchmark:
    """One folder benchmark.

    ``key``: its name in ``robustness.json`` (section and timing) and in log lines, e.g. ``imagenet_a``.
    ``flag``: its command-line flag, e.g. ``--ina_path``; the dashed spelling ``--ina-path`` is accepted too
    and the value lands in ``args.ina_path``.
    ``title``: its name in ``robustness.md`` and in the flag's help.
    ``subset``: the wnid list of its classes (a file in ``robustness/data``, or an absolute path): labels are
    positions in that list (restricted to the model's classes) and the logits are restricted to those
    columns, as for ImageNet-A/R's 200 classes. ``None``: it covers every class of the model (ImageNet-Sketch):
    labels are the model's output columns and the logits are left whole.
    """
    key: str
    flag: str
    title: str
    subset: Optional[str] = None

    def __post_init__(self):
        if not _KEY.fullmatch(self.key):
            raise ValueError(f'folder benchmark key {self.key!r}: expected a lowercase identifier such as imagenet_a')
        if not _FLAG.fullmatch(self.flag):
            raise ValueError(f'folder benchmark {self.key}: flag {self.flag!r} is not a --snake_case flag like '
                             '--ina_path')

    @property
    def dest(self) -> str:
        """The attribute of ``args`` holding the folder."""
        return self.flag[2:]

    @property
    def flags(self) -> Tuple[str, str]:
        """Both spellings of the flag, underscores first (which argparse takes for ``dest``)."""
        return self.flag, self.flag.replace('_', '-')

    @property
    def help(self) -> str:
        return f'{self.title}: DIR/<wnid>/*'


#: Every folder benchmark, in the order of the flags, the evaluation and the report.
FOLDER_BENCHMARKS: Tuple[FolderBenchmark, ...] = (
    FolderBenchmark('imagenet_a', '--ina_path', 'ImageNet-A', subset='imagenet_a_wnids.txt'),
    FolderBenchmark('imagenet_r', '--inr_path', 'ImageNet-R', subset='imagenet_r_wnids.txt'),
    FolderBenchmark('imagenet_sketch', '--insk_path', 'ImageNet-Sketch'),
)


def rows() -> Tuple[FolderBenchmark, ...]:
    """The current table (read at call time, so that a test may extend it); duplicated keys or flags are an
    error."""
    table = tuple(FOLDER_BENCHMARKS)
    for field in ('key', 'flag'):
        values = [getattr(b, field) for b in table]
        dup = sorted({v for v in values if values.count(v) > 1})
        if dup:
            raise ValueError(f'FOLDER_BENCHMARKS: duplicated {field} {", ".join(dup)}')
    return table


def by_key(key: str) -> FolderBenchmark:
    """The row named ``key``."""
    for b in rows():
        if b.key == key:
            return b
    raise KeyError(f'no folder benchmark {key!r} (known: {", ".join(b.key for b in rows())})')
