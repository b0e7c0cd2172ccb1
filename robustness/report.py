"""The robustness report: ``robustness.json`` (everything), ``robustness.md`` (tables) and
``robustness_severity.png`` (top-1 accuracy against severity, one line per corruption)."""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

from . import benchmarks
from .corruptions.params import CORRUPTIONS, EXTRA_CORRUPTIONS

JSON_NAME, MD_NAME, PNG_NAME = 'robustness.json', 'robustness.md', 'robustness_severity.png'
#: Report sections holding per-corruption accuracies, and their titles.
CORRUPTION_SECTIONS = {'imagenet_c': 'ImageNet-C', 'corruptions': 'Corrupted on the fly'}
#: Attack sections (one top-1 each; their line is named by the attack's repr when the section has it).
ATTACK_SECTIONS = {'fgsm': 'FGSM', 'pgd': 'PGD'}


def single_sections() -> Dict[str, str]:
    """Sections with one top-1 each, in report order, and their titles: the folder benchmarks (one per row of
    ``benchmarks.FOLDER_BENCHMARKS``), then the attacks."""
    return {**{b.key: b.title for b in benchmarks.rows()}, **ATTACK_SECTIONS}


def _f(v, digits=2) -> str:
    return '–' if v is None else f'{v:.{digits}f}'


def _summary_rows(report: Dict) -> List[str]:
    rows = []
    if 'clean' in report:
        rows.append(f'| Clean ({report["clean"].get("source", "val")}) | top-1 | {_f(report["clean"]["acc1"])} |')
    for key, title in CORRUPTION_SECTIONS.items():
        sec = report.get(key)
        if not sec:
            continue
        s = sec['summary']
        tag = '' if s['mce_complete'] else f' (partial: {s["mce_corruptions"]}/15 corruptions)'
        n_main = sum(1 for n in CORRUPTIONS if n in sec['accuracy'])
        over = 'the 15 corruptions' if n_main == 15 else f'{n_main} corruption{"s" if n_main > 1 else ""}'
        if n_main:
            rows.append(f'| {title} | mCE ↓{tag} | {_f(s["mce"])} |')
            rows.append(f'| {title} | mean top-1 over {over} | {_f(s["acc_mean"])} |')
        if s.get('extra_acc_mean') is not None:
            rows.append(f'| {title} | extra corruptions: mean CE ↓ / mean top-1 | {_f(s["extra_mce"])} / '
                        f'{_f(s["extra_acc_mean"])} |')
    for key, title in single_sections().items():
        sec = report.get(key)
        if sec:
            name = sec['attack'] if 'attack' in sec else title
            note = f' ({sec["classes"]} classes)' if 'classes' in sec else ''
            rows.append(f'| {name}{note} | top-1 | {_f(sec["acc1"])} |')
    return rows


def _corruption_table(sec: Dict, names) -> List[str]:
    sevs = sorted({int(s) for n in names for s in sec['accuracy'].get(n, {})})
    head = '| Corruption | CE ↓ | mean top-1 | ' + ' | '.join(f's{s}' for s in sevs) + ' |'
    lines = [head, '|' + '---|' * (3 + len(sevs))]
    per = sec['summary']['per_corruption']
    for n in names:
        if n not in sec['accuracy']:
            continue
        accs = sec['accuracy'][n]
        cells = ' | '.join(_f(accs.get(str(s), accs.get(s))) for s in sevs)
        lines.append(f'| {n} | {_f(per[n]["ce"])} | {_f(per[n]["acc_mean"])} | {cells} |')
    return lines


def markdown(report: Dict) -> str:
    out = ['# Robustness', '']
    meta = report.get('meta', {})
    if meta:
        out += [', '.join(f'{k}: {v}' for k, v in meta.items() if v is not None), '']
    out += ['| Benchmark | Metric | Value |', '|---|---|---|'] + _summary_rows(report) + ['']
    for key, title in CORRUPTION_SECTIONS.items():
        sec = report.get(key)
        if not sec:
            continue
        out += [f'## {title}', '', f'Source: {sec["source"]}. CE is normalised by AlexNet\'s ImageNet-C errors '
                '(Hendrycks & Dietterich 2019); it needs all 5 severities.', '']
        out += _corruption_table(sec, CORRUPTIONS) + ['']
        if any(n in sec['accuracy'] for n in EXTRA_CORRUPTIONS):
            out += ['Extra corruptions (not in the mCE):', ''] + _corruption_table(sec, EXTRA_CORRUPTIONS) + ['']
    if report.get('timings'):
        out += ['Run time (s): ' + ', '.join(f'{k} {v:.1f}' for k, v in report['timings'].items()), '']
    return '\n'.join(out).rstrip() + '\n'


def plot(report: Dict, path: str) -> Optional[str]:
    """Top-1 accuracy against severity (0 = clean, when known) per corruption; None if nothing to plot."""
    secs = [(k, t) for k, t in CORRUPTION_SECTIONS.items() if report.get(k)]
    if not secs:
        return None
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(secs), figsize=(7.5 * len(secs), 5.5), squeeze=False)
    cmap = plt.get_cmap('tab20')
    clean = report.get('clean', {}).get('acc1')
    for ax, (key, title) in zip(axes[0], secs):
        sec = report[key]
        for i, n in enumerate(list(CORRUPTIONS) + list(EXTRA_CORRUPTIONS)):
            accs = sec['accuracy'].get(n)
            if not accs:
                continue
            sevs = sorted(int(s) for s in accs)
            ys = [accs.get(str(s), accs.get(s)) for s in sevs]
            if clean is not None and key == 'corruptions':
                sevs, ys = [0] + sevs, [clean] + ys
            ax.plot(sevs, ys, marker='o', ms=3, lw=1.2, color=cmap(i % 20),
                    ls='--' if n in EXTRA_CORRUPTIONS else '-', label=n)
        ax.set_xlabel('severity' + (' (0 = clean)' if clean is not None and key == 'corruptions' else ''))
        ax.set_ylabel('top-1 accuracy (%)')
        mce = sec['summary']['mce']
        partial = '' if sec['summary']['mce_complete'] else f' ({sec["summary"]["mce_corruptions"]}/15)'
        ax.set_title(f'{title}' + (f' — mCE {mce:.1f}{partial}' if mce is not None else ''))
        ax.set_xticks(range(0 if clean is not None and key == 'corruptions' else 1, 6))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc='lower left')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(report: Dict, output_dir: str) -> Dict[str, str]:
    """Write the three files into ``output_dir``; returns their paths (the plot only if there is one)."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {'json': os.path.join(output_dir, JSON_NAME), 'md': os.path.join(output_dir, MD_NAME)}
    with open(paths['json'], 'w') as f:
        json.dump(report, f, indent=2)
        f.write('\n')
    with open(paths['md'], 'w') as f:
        f.write(markdown(report))
    png = plot(report, os.path.join(output_dir, PNG_NAME))
    if png:
        paths['png'] = png
    return paths
