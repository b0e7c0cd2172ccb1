"""Semantic segmentation with AbSViT on MMSegmentation (UperNet; ADE20K, PASCAL VOC, Cityscapes).

Importing the package registers the backbone ``AbSViTBackbone`` (and the sub-project's transforms)
in mmseg's registries; configs do it with ``custom_imports = dict(imports=['segmentation'])``.
"""
from segmentation.backbone import AbSViTBackbone  # noqa: F401  (registers with mmseg's MODELS)
from segmentation.layouts import CheckLabelIds  # noqa: F401,E402  (registers with mmseg's TRANSFORMS)
