"""Flickr30K retrieval: Karpathy's split, recall@K from a full image x text score matrix, and the
chunked (and distributed) cross-encoder scoring that fills it.

Layout under ``root``: ``dataset_flickr30k.json`` (Karpathy's split: ``images[*].filename``, ``split``,
``sentences[*].raw``) and ``flickr30k-images/<filename>``.

For AbSViT the image features depend on the text (the text is the prior), so no image feature can be
cached: every (image, text) pair is a full forward of both encoders and the fusion.
Its cost per 1k x 5k pairs: ``python -m vision_language.benchmark_retrieval``.
"""
import json
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence

import torch

import misc
from errors import UserError

__all__ = ['RetrievalDataError', 'Flickr30K', 'read_flickr30k', 'recall_at_k', 'score_matrix']


class RetrievalDataError(UserError):
    """The Flickr30K files are missing or not in Karpathy's layout."""


@dataclass
class Flickr30K:
    """One split: image paths, every caption, and which image each caption belongs to."""
    image_paths: List[str]
    captions: List[str]
    text_to_image: List[int]


def read_flickr30k(root: str, split: str = 'test', check_images: bool = True) -> Flickr30K:
    """Karpathy's ``split`` (``train``, ``val``, ``test``: 1,000 images and 5,000 captions)."""
    path = os.path.join(root, 'dataset_flickr30k.json')
    if not os.path.isfile(path):
        raise RetrievalDataError(f"Karpathy's split file not found: {path} (put dataset_flickr30k.json in {root})")
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get('images'), list):
        raise RetrievalDataError(f'{path} has no "images" list: is it Karpathy\'s dataset_flickr30k.json?')
    img_dir = os.path.join(root, 'flickr30k-images')
    if check_images and not os.path.isdir(img_dir):
        raise RetrievalDataError(f'Flickr30K image folder not found: {img_dir} (unpack flickr30k-images there)')
    out = Flickr30K([], [], [])
    for entry in data['images']:
        if entry.get('split') != split:
            continue
        try:
            sentences = [s['raw'] for s in entry['sentences']]
            name = entry['filename']
        except (KeyError, TypeError):
            raise RetrievalDataError(f'{path}: an image entry lacks "filename" or "sentences[*].raw"') from None
        out.text_to_image.extend([len(out.image_paths)] * len(sentences))
        out.captions.extend(sentences)
        out.image_paths.append(os.path.join(img_dir, name))
    if not out.image_paths:
        raise RetrievalDataError(f'{path} has no image of split {split!r}')
    return out


def recall_at_k(scores: torch.Tensor, text_to_image: Sequence[int], ks: Sequence[int] = (1, 5, 10)
                ) -> Dict[str, float]:
    """TR@K (image -> text: one of the image's captions in its top K) and IR@K (text -> image: the
    caption's image in its top K), in percent, from ``scores`` (images x texts)."""
    t2i = torch.as_tensor(list(text_to_image), device=scores.device)
    n_img, n_txt = scores.shape
    if t2i.numel() != n_txt:
        raise ValueError(f'{t2i.numel()} caption owners for a score matrix of {n_txt} texts')
    out = {}
    for k in ks:
        top_txt = scores.topk(min(k, n_txt), dim=1).indices                 # (images, k) texts
        hit_t = (t2i[top_txt] == torch.arange(n_img, device=scores.device)[:, None]).any(1)
        top_img = scores.topk(min(k, n_img), dim=0).indices                 # (k, texts) images
        hit_i = (top_img == t2i[None, :]).any(0)
        out[f'tr_r{k}'] = 100.0 * hit_t.float().mean().item()
        out[f'ir_r{k}'] = 100.0 * hit_i.float().mean().item()
    return out


PairScorer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def score_matrix(score_pairs: PairScorer, images: torch.Tensor, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor, chunk: int = 64, progress: Callable[[int, int], None] = None
                 ) -> torch.Tensor:
    """Every (image, text) score, (images x texts). ``score_pairs(images, ids, mask)`` scores B pairs;
    pairs go through it ``chunk`` at a time (bounded memory). Under DDP each rank scores its share of
    the images and the rows are summed across ranks, so every rank returns the full matrix."""
    n_img, n_txt = images.shape[0], input_ids.shape[0]
    rank, world = misc.get_rank(), misc.get_world_size()
    scores = torch.zeros(n_img, n_txt, device=images.device)
    mine = list(range(rank, n_img, world))
    for step, i in enumerate(mine):
        for start in range(0, n_txt, chunk):
            ids, mask = input_ids[start:start + chunk], attention_mask[start:start + chunk]
            img = images[i:i + 1].expand(ids.shape[0], *images.shape[1:])
            scores[i, start:start + ids.shape[0]] = score_pairs(img, ids, mask).float().view(-1)
        if progress is not None:
            progress(step + 1, len(mine))
    return misc.all_reduce_sum(scores) if world > 1 else scores
