"""VQAv2: answer normalisation as the official evaluation script, the answer vocabulary, soft scores,
the VQA score, the reader of the official files and the writer of the evaluation server's results.

Official layout under ``root`` (the VQAv2 release plus COCO images):

    v2_OpenEnded_mscoco_{train2014,val2014,test-dev2015,test2015}_questions.json
    v2_mscoco_{train2014,val2014}_annotations.json
    {train2014,val2014,test2015}/COCO_<split>_<12-digit image id>.jpg
"""
import itertools
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

import torch

from errors import UserError

__all__ = ['normalize_answer', 'answer_vocabulary', 'soft_score', 'soft_targets', 'targets_tensor', 'vqa_score',
           'official_accuracy',
           'VQAItem', 'read_vqa', 'write_results', 'VQADataError', 'QUESTION_FILES', 'ANNOTATION_FILES']


class VQADataError(UserError):
    """The VQAv2 files are missing or not in the official layout."""


# -- normalisation (the official evaluation script's rules) -------------------------------------------
_NUMBERS = {w: str(i) for i, w in enumerate('zero one two three four five six seven eight nine ten'.split())}
_NUMBERS['none'] = '0'
_ARTICLES = {'a', 'an', 'the'}
_PUNCTUATION = [';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
                '?', '!']
_PERIOD = re.compile(r'(?!<=\d)(\.)(?!\d)')   # a period not followed by a digit (the script's pattern, verbatim)
_COMMA_IN_NUMBER = re.compile(r'(\d)(,)(\d)')

# Contractions with their apostrophes; the official map sends every spelling with one or more apostrophes
# dropped to the full spelling. Spellings that are ordinary words are not mapped.
_CONTRACTIONS = """ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't
he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll let's ma'am mightn't mightn't've might've mustn't
must've needn't not've o'clock oughtn't shan't she'd she'd've she's should've shouldn't shouldn't've somebody'd
somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's something'd something'd've
something'll that's there'd there'd've there're there's they'd they'd've they'll they're they've wasn't we'd've
we've weren't what'll what're what's what've when's where'd where's where've who'd who'd've who'll who's who've
why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're
you've""".split()
_NOT_CONTRACTIONS = {'its', 'were', 'well', 'ill', 'hell', 'shell', 'wed', 'id', 'hes', 'whos'}


def _contraction_map() -> Dict[str, str]:
    mapping = {}
    for full in _CONTRACTIONS:
        parts = full.split("'")
        for keep in itertools.product((True, False), repeat=len(parts) - 1):
            if all(keep):
                continue
            spelled = parts[0] + ''.join(("'" if k else '') + p for k, p in zip(keep, parts[1:]))
            if spelled not in _NOT_CONTRACTIONS:
                mapping[spelled] = full
    return mapping


_CONTRACTION_MAP = _contraction_map()


def _punctuation(text: str) -> str:
    out = text
    for p in _PUNCTUATION:
        if (p + ' ' in text or ' ' + p in text) or _COMMA_IN_NUMBER.search(text) is not None:
            out = out.replace(p, '')
        else:
            out = out.replace(p, ' ')
    return _PERIOD.sub('', out)


def _digits_and_articles(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return ' '.join(_CONTRACTION_MAP.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
    """The official evaluation's answer processing: whitespace, punctuation, number words -> digits,
    articles dropped, contractions given their apostrophes ("Two dogs." -> "2 dogs", "dont" -> "don't")."""
    text = answer.replace('\n', ' ').replace('\t', ' ').strip()
    return _digits_and_articles(_punctuation(text))


# -- vocabulary and targets ---------------------------------------------------------------------------
def answer_vocabulary(most_common_answers: Iterable[str], min_count: int = 9) -> Dict[str, int]:
    """Answer -> label for every normalised ``multiple_choice_answer`` occurring at least ``min_count``
    times (3,129 answers on VQAv2 train+val), most frequent first (ties in first-seen order)."""
    counts = Counter(normalize_answer(a) for a in most_common_answers)
    kept = [a for a, n in counts.most_common() if n >= min_count]
    return {a: i for i, a in enumerate(kept)}


def soft_score(count: int) -> float:
    """min(1, 0.3 * count): 0, 0.3, 0.6, 0.9, then 1 (the official metric's 10-choose-9 average, rounded)."""
    return min(1.0, 0.3 * count)


def soft_targets(answers: Sequence[str], vocab: Dict[str, int]) -> Dict[int, float]:
    """The soft scores of one question's (ten) annotator answers, for answers in the vocabulary."""
    counts = Counter(normalize_answer(a) for a in answers)
    return {vocab[a]: soft_score(n) for a, n in counts.items() if a in vocab}


def targets_tensor(labels: Sequence[Dict[int, float]], num_answers: int) -> torch.Tensor:
    """(B, num_answers) soft-score targets from per-question {label: score}."""
    out = torch.zeros(len(labels), num_answers)
    for i, d in enumerate(labels):
        for label, score in d.items():
            out[i, label] = score
    return out


def vqa_score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over questions of the soft score of the arg-max answer (divide by the count for the mean)."""
    return targets.gather(1, logits.argmax(dim=1, keepdim=True)).sum()


def official_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """The official per-question accuracy: the mean over the 10 leave-one-out sets of 9 annotators of
    min(1, matches / 3), with prediction and answers normalised."""
    pred = normalize_answer(prediction)
    gts = [normalize_answer(a) for a in answers]
    accs = [min(1.0, sum(g == pred for j, g in enumerate(gts) if j != i) / 3) for i in range(len(gts))]
    return sum(accs) / len(accs)


# -- the official files -------------------------------------------------------------------------------
QUESTION_FILES = {s: f'v2_OpenEnded_mscoco_{s}_questions.json' for s in ('train2014', 'val2014', 'test-dev2015',
                                                                          'test2015')}
ANNOTATION_FILES = {s: f'v2_mscoco_{s}_annotations.json' for s in ('train2014', 'val2014')}


@dataclass
class VQAItem:
    question_id: int
    question: str
    image_path: str
    answers: List[str] = field(default_factory=list)  #: the annotators' answers (empty for test splits)
    multiple_choice_answer: Optional[str] = None


def _image_dir(split: str) -> str:
    return 'test2015' if split.startswith('test') else split


def _read_json(path: str, key: str, what: str) -> list:
    if not os.path.isfile(path):
        raise VQADataError(f'{what} not found: {path} (download the official VQAv2 files into {os.path.dirname(path)})')
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or key not in data:
        raise VQADataError(f'{path} has no "{key}" list: is it an official VQAv2 {what}?')
    return data[key]


def read_vqa(root: str, split: str, check_images: bool = True) -> List[VQAItem]:
    """Questions of ``split`` (``train2014``, ``val2014``, ``test-dev2015``, ``test2015``) with their
    answers (train/val) and image paths; a clear error for a missing or malformed file or image folder."""
    if split not in QUESTION_FILES:
        raise VQADataError(f'unknown VQAv2 split {split!r}; choose from {tuple(QUESTION_FILES)}')
    questions = _read_json(os.path.join(root, QUESTION_FILES[split]), 'questions', 'questions file')
    answers = {}
    if split in ANNOTATION_FILES:
        for a in _read_json(os.path.join(root, ANNOTATION_FILES[split]), 'annotations', 'annotations file'):
            answers[a['question_id']] = a
    img_dir = os.path.join(root, _image_dir(split))
    if check_images and not os.path.isdir(img_dir):
        raise VQADataError(f'COCO image folder not found: {img_dir} (unpack COCO {_image_dir(split)} there)')
    items = []
    for q in questions:
        ann = answers.get(q['question_id'])
        if split in ANNOTATION_FILES and ann is None:
            raise VQADataError(f'question {q["question_id"]} of {split} has no annotation: mismatched files?')
        name = f'COCO_{_image_dir(split)}_{q["image_id"]:012d}.jpg'
        items.append(VQAItem(q['question_id'], q['question'], os.path.join(img_dir, name),
                             [x['answer'] for x in ann['answers']] if ann else [],
                             ann['multiple_choice_answer'] if ann else None))
    return items


def write_results(path: str, question_ids: Sequence[int], answers: Sequence[str]) -> None:
    """The evaluation server's results file: ``[{"question_id": int, "answer": str}, ...]``."""
    if len(question_ids) != len(answers):
        raise ValueError(f'{len(question_ids)} question ids for {len(answers)} answers')
    with open(path, 'w') as f:
        json.dump([{'question_id': int(q), 'answer': a} for q, a in zip(question_ids, answers)], f)
