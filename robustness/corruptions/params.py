"""Published severity parameters of the ImageNet-C family and the rule that adapts them to any image size.

Three published tables (Hendrycks & Dietterich, ICLR 2019, ``hendrycks/robustness``), one per reference
resolution:

* ``cifar``    (32 px):  ``ImageNet-C/create_c/make_cifar_c.py`` (CIFAR-10-C),
* ``tiny``     (64 px):  ``ImageNet-C/create_c/make_tinyimagenet_c.py`` (Tiny-ImageNet-C),
* ``imagenet`` (224 px): ``ImageNet-C/create_c/make_imagenet_c.py`` (ImageNet-C).

Rule for any image (``resolve``): the profile whose reference size is nearest to the image's shorter side in
log scale is chosen (shorter side up to 45 px -> cifar, 46-119 px -> tiny, 120 px and more -> imagenet),
unless one is named.
Its numbers are used as published, except the ones measured in pixels, which are multiplied by
``scale = shorter side / reference size`` (see ``SPATIAL``): blur sigmas and radii, glass-blur pixel shifts,
motion-blur radius and sigma, snow-flake size, spatter blob size, the elastic displacements and the factor by
which frost's photographs are resized (``FROST_PHOTO_SCALE``). Scale-free numbers (noise levels, blend
weights, zoom factors, JPEG quality, pixelation ratio) are unchanged. At the reference sizes (32, 64,
224 px) the published parameters are therefore used unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

#: The 15 corruptions of the benchmark (mCE), in the benchmark's order.
CORRUPTIONS = ('gaussian_noise', 'shot_noise', 'impulse_noise',
               'defocus_blur', 'glass_blur', 'motion_blur', 'zoom_blur',
               'snow', 'frost', 'fog',
               'brightness', 'contrast', 'elastic_transform', 'pixelate', 'jpeg_compression')
#: The 4 held-out corruptions, reported separately.
EXTRA_CORRUPTIONS = ('speckle_noise', 'gaussian_blur', 'spatter', 'saturate')
ALL_CORRUPTIONS = CORRUPTIONS + EXTRA_CORRUPTIONS
SEVERITIES = (1, 2, 3, 4, 5)

# Per corruption, one entry per severity 1..5. Tuples follow the field names in FIELDS.
FIELDS = {
    'gaussian_noise': ('sigma',),
    'shot_noise': ('photons',),
    'impulse_noise': ('amount',),
    'speckle_noise': ('sigma',),
    'gaussian_blur': ('sigma',),
    'glass_blur': ('sigma', 'max_delta', 'iterations'),
    'defocus_blur': ('radius', 'alias_blur'),
    'motion_blur': ('radius', 'sigma'),
    'zoom_blur': ('stop', 'step'),                 # zoom factors np.arange(1, stop, step), as published
    'snow': ('mean', 'std', 'zoom', 'threshold', 'blur_radius', 'blur_sigma', 'blend'),
    'frost': ('image_weight', 'frost_weight'),
    'fog': ('strength', 'decay'),
    'spatter': ('mean', 'std', 'sigma', 'threshold', 'intensity', 'mud'),
    'brightness': ('delta',),
    'contrast': ('factor',),
    'saturate': ('factor', 'offset'),
    'jpeg_compression': ('quality',),
    'pixelate': ('ratio',),
    'elastic_transform': ('alpha', 'sigma', 'affine'),
}

# Which fields are lengths in pixels (multiplied by ``scale``). For spatter the second ``intensity`` is a
# blur sigma only in the mud mode (handled in the corruption).
SPATIAL = {
    'gaussian_blur': ('sigma',),
    'glass_blur': ('sigma', 'max_delta'),
    'motion_blur': ('radius', 'sigma'),
    'snow': ('zoom', 'blur_radius', 'blur_sigma'),
    'spatter': ('sigma',),
    'elastic_transform': ('alpha', 'sigma', 'affine'),
}


def _elastic(size, rows):
    return [tuple(size * v for v in row) for row in rows]


TABLES = {
    'imagenet': {
        'gaussian_noise': [.08, .12, .18, .26, .38],
        'shot_noise': [60, 25, 12, 5, 3],
        'impulse_noise': [.03, .06, .09, .17, .27],
        'speckle_noise': [.15, .2, .35, .45, .6],
        'gaussian_blur': [1, 2, 3, 4, 6],
        'glass_blur': [(.7, 1, 2), (.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
        'defocus_blur': [(3, .1), (4, .5), (6, .5), (8, .5), (10, .5)],
        'motion_blur': [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
        'zoom_blur': [(1.11, .01), (1.16, .01), (1.21, .02), (1.26, .02), (1.31, .03)],
        'snow': [(.1, .3, 3, .5, 10, 4, .8), (.2, .3, 2, .5, 12, 4, .7), (.55, .3, 4, .9, 12, 8, .7),
                 (.55, .3, 4.5, .85, 12, 8, .65), (.55, .3, 2.5, .85, 12, 12, .55)],
        'frost': [(1, .4), (.8, .6), (.7, .7), (.65, .7), (.6, .75)],
        'fog': [(1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)],
        'spatter': [(.65, .3, 4, .69, .6, 0), (.65, .3, 3, .68, .6, 0), (.65, .3, 2, .68, .5, 0),
                    (.65, .3, 1, .65, 1.5, 1), (.67, .4, 1, .65, 1.5, 1)],
        'brightness': [.1, .2, .3, .4, .5],
        'contrast': [.4, .3, .2, .1, .05],
        'saturate': [(.3, 0), (.1, 0), (2, 0), (5, .1), (20, .2)],
        'jpeg_compression': [25, 18, 15, 10, 7],
        'pixelate': [.6, .5, .4, .3, .25],
        # published as multiples of 244 (sic) for 224-px images
        'elastic_transform': _elastic(244, [(2, .7, .1), (2, .08, .2), (.05, .01, .02), (.07, .01, .02),
                                            (.12, .01, .02)]),
    },
    'tiny': {
        'gaussian_noise': [.04, .08, .12, .15, .18],
        'shot_noise': [250, 100, 50, 30, 15],
        'impulse_noise': [.01, .02, .05, .08, .14],
        'speckle_noise': [.15, .2, .25, .3, .35],
        'gaussian_blur': [.5, .75, 1, 1.25, 1.5],
        'glass_blur': [(.1, 1, 1), (.5, 1, 1), (.6, 1, 2), (.7, 2, 1), (.9, 2, 2)],
        'defocus_blur': [(.5, .6), (1, .1), (1.5, .1), (2.5, .01), (3, .1)],
        'motion_blur': [(10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)],
        'zoom_blur': [(1.06, .01), (1.11, .01), (1.16, .01), (1.21, .01), (1.26, .01)],
        'snow': [(.1, .2, 1, .6, 8, 3, .8), (.1, .2, 1, .5, 10, 4, .8), (.15, .3, 1.75, .55, 10, 4, .7),
                 (.25, .3, 2.25, .6, 12, 6, .65), (.3, .3, 1.25, .65, 14, 12, .6)],
        'frost': [(1, .3), (.9, .4), (.8, .45), (.75, .5), (.7, .55)],
        'fog': [(.4, 3), (.7, 3), (1, 2.5), (1.5, 2), (2, 1.75)],
        'spatter': [(.62, .1, .7, .7, .6, 0), (.65, .1, .8, .7, .6, 0), (.65, .3, 1, .69, .6, 0),
                    (.65, .1, .7, .68, .6, 1), (.65, .1, .5, .67, .6, 1)],
        'brightness': [.1, .2, .3, .4, .5],
        'contrast': [.4, .3, .2, .1, .05],
        'saturate': [(.3, 0), (.1, 0), (2, 0), (5, .1), (30, .2)],
        'jpeg_compression': [65, 58, 50, 40, 25],
        'pixelate': [.9, .8, .7, .6, .5],
        'elastic_transform': _elastic(64, [(0, 0, .08), (.05, .3, .06), (.1, .08, .06), (.1, .03, .03),
                                           (.16, .03, .02)]),
    },
    'cifar': {
        'gaussian_noise': [.04, .06, .08, .09, .10],
        'shot_noise': [500, 250, 100, 75, 50],
        'impulse_noise': [.01, .02, .03, .05, .07],
        'speckle_noise': [.06, .1, .12, .16, .2],
        'gaussian_blur': [.4, .6, .7, .8, 1],
        'glass_blur': [(.05, 1, 1), (.25, 1, 1), (.4, 1, 1), (.25, 1, 2), (.4, 1, 2)],
        'defocus_blur': [(.3, .4), (.4, .5), (.5, .6), (1, .2), (1.5, .1)],
        'motion_blur': [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
        'zoom_blur': [(1.06, .01), (1.11, .01), (1.16, .01), (1.21, .01), (1.26, .01)],
        'snow': [(.1, .2, 1, .6, 8, 3, .95), (.1, .2, 1, .5, 10, 4, .9), (.15, .3, 1.75, .55, 10, 4, .9),
                 (.25, .3, 2.25, .6, 12, 6, .85), (.3, .3, 1.25, .65, 14, 12, .8)],
        'frost': [(1, .2), (1, .3), (.9, .4), (.85, .4), (.75, .45)],
        'fog': [(.2, 3), (.5, 3), (.75, 2.5), (1, 2), (1.5, 1.75)],
        'spatter': [(.62, .1, .7, .7, .5, 0), (.65, .1, .8, .7, .5, 0), (.65, .3, 1, .69, .5, 0),
                    (.65, .1, .7, .69, .6, 1), (.65, .1, .5, .68, .6, 1)],
        'brightness': [.05, .1, .15, .2, .3],
        'contrast': [.75, .5, .4, .3, .15],
        'saturate': [(.3, 0), (.1, 0), (1.5, 0), (2, .1), (2.5, .2)],
        'jpeg_compression': [80, 65, 58, 50, 40],
        'pixelate': [.95, .9, .85, .75, .65],
        'elastic_transform': _elastic(32, [(0, 0, .08), (.05, .2, .07), (.08, .06, .06), (.1, .04, .05),
                                           (.1, .03, .03)]),
    },
}

#: Reference image side of each profile.
REFERENCE_SIZE = {'cifar': 32, 'tiny': 64, 'imagenet': 224}
#: Factor by which the published code resizes the frost photographs before cropping the image's size from
#: them: ImageNet-C crops the photo as it is, Tiny-ImageNet-C shrinks it by 0.3 (crop 64), CIFAR-10-C by 0.2
#: (crop 32). At other sizes the factor is multiplied by ``scale``, so the crop covers the same share of the
#: photograph.
FROST_PHOTO_SCALE = {'cifar': 0.2, 'tiny': 0.3, 'imagenet': 1.0}
PROFILES = tuple(REFERENCE_SIZE)


@dataclass(frozen=True)
class Params:
    """The parameters of one corruption at one severity for one image size."""
    name: str
    severity: int
    profile: str
    scale: float
    values: dict

    def __getattr__(self, key):   # only called for names that are not dataclass fields
        try:
            return self.__dict__['values'][key]
        except KeyError:
            raise AttributeError(key) from None

    def __post_init__(self):
        clash = set(self.values) & {'name', 'severity', 'profile', 'scale', 'values'}
        if clash:
            raise ValueError(f'parameter names {clash} would be shadowed by Params fields')


def auto_profile(height: int, width: int) -> str:
    """The profile whose reference size is nearest (log scale) to the image's shorter side."""
    side = min(height, width)
    return min(PROFILES, key=lambda p: abs(math.log(side / REFERENCE_SIZE[p])))


def check_name(name: str) -> None:
    if name not in FIELDS:
        raise ValueError(f'unknown corruption {name!r}; expected one of: {", ".join(ALL_CORRUPTIONS)}')


def check_severity(severity) -> int:
    if isinstance(severity, bool) or int(severity) != severity or not 1 <= int(severity) <= 5:
        raise ValueError(f'severity must be an integer in 1..5, got {severity!r}')
    return int(severity)


def resolve(name: str, severity: int, height: int, width: int, profile: str = 'auto') -> Params:
    """Parameters of ``name`` at ``severity`` for an image of ``height`` x ``width`` pixels."""
    check_name(name)
    severity = check_severity(severity)
    if profile == 'auto':
        profile = auto_profile(height, width)
    elif profile not in TABLES:
        raise ValueError(f'unknown profile {profile!r}; expected auto or one of {PROFILES}')
    scale = min(height, width) / REFERENCE_SIZE[profile]
    raw = TABLES[profile][name][severity - 1]
    raw = raw if isinstance(raw, tuple) else (raw,)
    values = dict(zip(FIELDS[name], raw))
    for key in SPATIAL.get(name, ()):
        values[key] = values[key] * scale
    if name == 'spatter' and values['mud']:
        values['intensity'] = values['intensity'] * scale   # a blur sigma in the mud mode
    if name == 'glass_blur':
        values['max_delta'] = max(1, int(round(values['max_delta'])))
    if name == 'frost':
        values['photo_scale'] = FROST_PHOTO_SCALE[profile] * scale
    return Params(name, severity, profile, scale, values)
