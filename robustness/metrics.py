"""Corruption Error (CE) and mean CE (mCE) of Hendrycks & Dietterich (ICLR 2019).

CE_c = sum_s err(model, c, s) / sum_s err(AlexNet, c, s), over the severities s = 1..5; mCE is the mean of
CE_c over the 15 benchmark corruptions, both in percent. The table holds AlexNet's top-1 error on ImageNet-C
averaged over the 5 severities (so the sums are 5 x these numbers). CE needs all 5 severities of a
corruption; mCE needs all 15 corruptions (otherwise it is reported over those present, and flagged).
"""
from __future__ import annotations

from typing import Dict, Mapping

from .corruptions.params import CORRUPTIONS, EXTRA_CORRUPTIONS, SEVERITIES

#: AlexNet's top-1 error on ImageNet-C, mean over the 5 severities (the standard normalisation table).
ALEXNET_ERR = {
    'gaussian_noise': 0.886428, 'shot_noise': 0.894468, 'impulse_noise': 0.922640,
    'defocus_blur': 0.819880, 'glass_blur': 0.826268, 'motion_blur': 0.785948, 'zoom_blur': 0.798360,
    'snow': 0.866816, 'frost': 0.826572, 'fog': 0.819324,
    'brightness': 0.564592, 'contrast': 0.853204, 'elastic_transform': 0.646056, 'pixelate': 0.717840,
    'jpeg_compression': 0.606500,
}
#: The same for the 4 extra (held-out) corruptions, as published in hendrycks/robustness; their CE is
#: reported separately and never enters the mCE.
ALEXNET_ERR_EXTRA = {'speckle_noise': 0.845388, 'gaussian_blur': 0.787108, 'spatter': 0.717512,
                     'saturate': 0.658248}


def _as_fraction(acc: float) -> float:
    if not 0.0 <= acc <= 100.0:
        raise ValueError(f'accuracy must be a percentage in [0, 100], got {acc}')
    return acc / 100.0


def corruption_error(acc_by_severity: Mapping[int, float], name: str) -> float | None:
    """CE (percent) of one corruption from its top-1 accuracies (percent) at severities 1..5, or None
    when a severity is missing or the corruption has no AlexNet reference."""
    ref = ALEXNET_ERR.get(name, ALEXNET_ERR_EXTRA.get(name))
    accs = {int(s): a for s, a in acc_by_severity.items()}
    if ref is None or any(s not in accs for s in SEVERITIES):
        return None
    err = sum(1.0 - _as_fraction(accs[s]) for s in SEVERITIES)
    return 100.0 * err / (len(SEVERITIES) * ref)


def summarise(acc: Mapping[str, Mapping[int, float]]) -> Dict:
    """From ``{corruption: {severity: top-1 %}}``: per-corruption mean accuracy and CE, mCE over the 15
    (flagged ``mce_complete`` when all 15 have all 5 severities), mean accuracy, the extras separately."""
    per = {}
    for name, by_sev in acc.items():
        if not by_sev:
            continue
        per[name] = {'acc_mean': sum(by_sev.values()) / len(by_sev), 'ce': corruption_error(by_sev, name)}
    main = [n for n in CORRUPTIONS if n in per]
    ces = [per[n]['ce'] for n in main if per[n]['ce'] is not None]
    extra = [n for n in EXTRA_CORRUPTIONS if n in per]
    extra_ces = [per[n]['ce'] for n in extra if per[n]['ce'] is not None]
    return {
        'per_corruption': per,
        'mce': sum(ces) / len(ces) if ces else None,
        'mce_corruptions': len(ces),
        'mce_complete': len(ces) == len(CORRUPTIONS),
        'acc_mean': sum(per[n]['acc_mean'] for n in main) / len(main) if main else None,
        'extra_mce': sum(extra_ces) / len(extra_ces) if extra_ces else None,
        'extra_acc_mean': sum(per[n]['acc_mean'] for n in extra) / len(extra) if extra else None,
    }
