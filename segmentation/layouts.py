"""Checks that run before training or testing, so that a wrong dataset folder or a bad label map is
one clear error instead of an empty dataset or a cross-entropy index error deep inside a run.

* ``check_config_data``: every dataloader's folders and split files exist in the layout its dataset
  class reads (ADE20K, PASCAL VOC, Cityscapes, or any mmseg ``BaseSegDataset``), with images and
  label maps of the expected suffixes; and it adds ``CheckLabelIds`` after ``LoadAnnotations``.
* ``CheckLabelIds`` (an mmseg transform): a label map holding ids outside ``[0, num_classes)`` and
  the ignore index names the file and the ids.
"""
import glob
import inspect
import os.path as osp
from typing import Dict, Sequence

import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.registry import DATASETS, TRANSFORMS

from segmentation.exceptions import DatasetLayoutError, LabelRangeError

__all__ = ['check_config_data', 'check_dataset_layout', 'CheckLabelIds']

#: what each standard dataset's folder looks like, for the error message
EXPECTED = {
    'ADE20KDataset': 'ADEChallengeData2016/{images,annotations}/{training,validation}/ (*.jpg, *.png)',
    'PascalVOCDataset': 'VOC2012/JPEGImages/*.jpg, VOC2012/SegmentationClass/*.png and '
                        'VOC2012/ImageSets/Segmentation/{train,val}.txt',
    'CityscapesDataset': 'cityscapes/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and '
                         'cityscapes/gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png '
                         "(make the labelTrainIds with mmseg's tools/dataset_converters/cityscapes.py)",
}


def _suffixes(dataset_cfg: dict) -> Dict[str, str]:
    """The image / label suffixes the dataset reads: the config's, else its class's defaults."""
    cls = DATASETS.get(dataset_cfg['type'])
    defaults = {k: v.default for k, v in inspect.signature(cls.__init__).parameters.items()} if cls else {}
    return {k: dataset_cfg.get(k, defaults.get(k, '')) for k in ('img_suffix', 'seg_map_suffix')}


def _layout_error(dataset_cfg: dict, problem: str) -> DatasetLayoutError:
    kind = dataset_cfg['type']
    hint = EXPECTED.get(kind, 'the layout of the dataset class')
    return DatasetLayoutError(f'{kind} at {dataset_cfg.get("data_root")!r}: {problem}. Expected {hint}; point the '
                              'config at the data with --cfg-options or the dataloaders\' data_root')


def check_dataset_layout(dataset_cfg: dict) -> None:
    """Raise ``DatasetLayoutError`` unless the dataset's folders, files and suffixes are there."""
    root = dataset_cfg.get('data_root') or ''
    if not osp.isdir(root):
        raise _layout_error(dataset_cfg, 'the data_root folder does not exist')
    prefix = dataset_cfg.get('data_prefix', {})
    suffix = _suffixes(dataset_cfg)
    for key, suffix_key in (('img_path', 'img_suffix'), ('seg_map_path', 'seg_map_suffix')):
        folder = osp.join(root, prefix.get(key, ''))
        if not osp.isdir(folder):
            raise _layout_error(dataset_cfg, f'{folder} is missing')
        if not glob.glob(osp.join(folder, '**', '*' + suffix[suffix_key]), recursive=True):
            raise _layout_error(dataset_cfg, f'{folder} holds no *{suffix[suffix_key]} files')
    ann = dataset_cfg.get('ann_file')
    if ann and not osp.isfile(osp.join(root, ann)):
        raise _layout_error(dataset_cfg, f'the split file {osp.join(root, ann)} is missing')


def _with_label_check(pipeline: Sequence[dict], num_classes: int, ignore_index: int) -> list:
    """The pipeline with ``CheckLabelIds`` right after ``LoadAnnotations`` (once)."""
    out = []
    for t in pipeline:
        out.append(t)
        if t.get('type') == 'LoadAnnotations':
            out.append(dict(type='CheckLabelIds', num_classes=num_classes, ignore_index=ignore_index))
    return out


def check_config_data(cfg, splits: Sequence[str] = ('train_dataloader', 'val_dataloader')) -> None:
    """Check the layout of every dataloader in ``splits`` that the config has, and add the label-id
    check to its pipeline. Modifies ``cfg`` in place."""
    head = cfg.model.decode_head
    num_classes = head.num_classes
    ignore_index = head.get('ignore_index', 255)
    for split in splits:
        loader = cfg.get(split)
        if not loader:
            continue
        ds = loader.dataset
        check_dataset_layout(ds)
        if not any(t.get('type') == 'CheckLabelIds' for t in ds.pipeline):
            ds.pipeline = _with_label_check(ds.pipeline, num_classes, ignore_index)


@TRANSFORMS.register_module()
class CheckLabelIds(BaseTransform):
    """Refuse a label map with ids outside ``[0, num_classes)`` other than ``ignore_index``: a
    cross-entropy would fail with an index error far from the cause (or, on a GPU, an assert)."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)

    def transform(self, results: dict) -> dict:
        seg = results.get('gt_seg_map')
        if seg is None:
            return results
        ids = np.unique(seg)
        bad = ids[((ids < 0) | (ids >= self.num_classes)) & (ids != self.ignore_index)]
        if bad.size:
            raise LabelRangeError(
                f'label map {results.get("seg_map_path")} holds ids {bad[:10].tolist()} outside [0, '
                f'{self.num_classes}) and the ignore index {self.ignore_index}: is it the right dataset (or, for '
                'ADE20K, is reduce_zero_label set; for Cityscapes, are these labelTrainIds)?')
        return results
