"""Datasets and batches for VQAv2 and Flickr30K training and evaluation (images read with PIL).

Transforms as METER's CLIP setting: resize (bicubic) + centre crop to the image size, RandAugment(2, 9)
when training, CLIP's normalisation. Texts are tokenised per batch (``TextCollate``), truncated to
50 tokens for VQA and 40 for retrieval.
"""
import random
from typing import Callable, Dict, List, Optional, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from datasets.errors import UnreadableImageError
from vision_language.retrieval import Flickr30K
from vision_language.vqa import VQAItem, soft_targets, targets_tensor

__all__ = ['CLIP_MEAN', 'CLIP_STD', 'image_transform', 'load_rgb', 'VQADataset', 'FlickrTrainDataset',
           'FlickrImages', 'TextCollate', 'MAX_TEXT_LEN']

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_TEXT_LEN = {'vqa': 50, 'flickr': 40}


def image_transform(size: int, train: bool) -> Callable:
    steps = [T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)]
    if train:
        steps.append(T.RandAugment(num_ops=2, magnitude=9))
    return T.Compose(steps + [T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])


def load_rgb(path: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert('RGB')
    except (OSError, ValueError) as e:
        raise UnreadableImageError(f'cannot read image {path}: {e} (is the image folder complete?)') from None


class VQADataset(Dataset):
    """(image, question, {label: soft score}, question id) per question."""

    def __init__(self, items: Sequence[VQAItem], vocab: Dict[str, int], transform: Callable):
        self.items, self.vocab, self.transform = list(items), vocab, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        it = self.items[i]
        return {'image': self.transform(load_rgb(it.image_path)), 'text': it.question,
                'targets': soft_targets(it.answers, self.vocab), 'question_id': it.question_id}


class FlickrTrainDataset(Dataset):
    """Per caption: its image, the caption, ``negatives`` captions of other images (ranking loss) and
    one ITM caption that is another image's with probability ``itm_negative`` (then ``is_match`` 0)."""

    def __init__(self, data: Flickr30K, transform: Callable, negatives: int = 15, itm_negative: float = 0.5):
        self.data, self.transform, self.negatives, self.itm_negative = data, transform, negatives, itm_negative

    def __len__(self) -> int:
        return len(self.data.captions)

    def _other_caption(self, image: int) -> str:
        while True:
            j = random.randrange(len(self.data.captions))
            if self.data.text_to_image[j] != image:
                return self.data.captions[j]

    def __getitem__(self, i: int):
        image = self.data.text_to_image[i]
        match = random.random() >= self.itm_negative
        return {'image': self.transform(load_rgb(self.data.image_paths[image])),
                'rank_texts': [self.data.captions[i]] + [self._other_caption(image) for _ in range(self.negatives)],
                'itm_text': self.data.captions[i] if match else self._other_caption(image), 'is_match': int(match)}


class FlickrImages(Dataset):
    """The images of a split, for evaluation."""

    def __init__(self, data: Flickr30K, transform: Callable):
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data.image_paths)

    def __getitem__(self, i: int):
        return self.transform(load_rgb(self.data.image_paths[i]))


class TextCollate:
    """Stacks images and tokenises the batch's texts (padding to the longest, truncation at ``max_len``)."""

    def __init__(self, tokenizer, max_len: int, num_answers: Optional[int] = None):
        self.tokenizer, self.max_len, self.num_answers = tokenizer, max_len, num_answers

    def tokens(self, texts: List[str]) -> Dict[str, torch.Tensor]:
        enc = self.tokenizer(texts, padding='longest', truncation=True, max_length=self.max_len, return_tensors='pt')
        return {'input_ids': enc['input_ids'], 'attention_mask': enc['attention_mask']}

    def __call__(self, samples: List[dict]) -> Dict[str, torch.Tensor]:
        batch = {'images': torch.stack([s['image'] for s in samples])}
        if 'text' in samples[0]:  # VQA
            batch.update(self.tokens([s['text'] for s in samples]))
            batch['targets'] = targets_tensor([s['targets'] for s in samples], self.num_answers)
            batch['question_id'] = torch.tensor([s['question_id'] for s in samples])
        else:  # Flickr30K training
            k = len(samples[0]['rank_texts'])
            rank = self.tokens([t for s in samples for t in s['rank_texts']])
            batch['rank_input_ids'] = rank['input_ids'].view(len(samples), k, -1)
            batch['rank_attention_mask'] = rank['attention_mask'].view(len(samples), k, -1)
            itm = self.tokens([s['itm_text'] for s in samples])
            batch['itm_input_ids'], batch['itm_attention_mask'] = itm['input_ids'], itm['attention_mask']
            batch['is_match'] = torch.tensor([s['is_match'] for s in samples])
        return batch
