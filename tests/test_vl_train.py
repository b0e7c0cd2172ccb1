"""The training entry point on small generated files in the official VQAv2 / Flickr30K layouts:
it trains, evaluates, checkpoints, and resumes exactly."""
import json
import os

import numpy as np
import torch
from PIL import Image

from vision_language import train
from vision_language.offline import minilm_path

QUESTIONS = [('how many dogs?', '2'), ('is it red?', 'yes'), ('is it blue?', 'no')]


def _jpg(path, seed):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)


def make_vqa_root(root, n_per_answer=10):
    """train2014 and val2014 questions/annotations/images, each answer the multiple choice of >= 9 questions."""
    for split in ('train2014', 'val2014'):
        qs, anns = [], []
        for k in range(n_per_answer * len(QUESTIONS)):
            q, a = QUESTIONS[k % len(QUESTIONS)]
            qid, img = 1000 * (split == 'val2014') + k, k % 6
            qs.append({'image_id': img, 'question': q, 'question_id': qid})
            anns.append({'question_id': qid, 'image_id': img, 'multiple_choice_answer': a,
                         'answers': [{'answer': a if j < 7 else 'maybe', 'answer_id': j} for j in range(10)]})
        with open(os.path.join(root, f'v2_OpenEnded_mscoco_{split}_questions.json'), 'w') as f:
            json.dump({'questions': qs}, f)
        with open(os.path.join(root, f'v2_mscoco_{split}_annotations.json'), 'w') as f:
            json.dump({'annotations': anns}, f)
        for img in range(6):
            _jpg(os.path.join(root, split, f'COCO_{split}_{img:012d}.jpg'), img)


def make_flickr_root(root):
    images = [{'filename': f'{i}.jpg', 'split': 'train' if i < 4 else 'test',
               'sentences': [{'raw': f'a photo number {i} version {j}'} for j in range(2)]} for i in range(7)]
    with open(os.path.join(root, 'dataset_flickr30k.json'), 'w') as f:
        json.dump({'images': images, 'dataset': 'flickr30k'}, f)
    for i in range(7):
        _jpg(os.path.join(root, 'flickr30k-images', f'{i}.jpg'), 10 + i)


def _args(root, out, *extra):
    return ['--data-root', str(root), '--output-dir', str(out), '--text-encoder', 'tiny-roberta',
            '--tokenizer', minilm_path(), '--local-files-only', '--image-encoder', 'absvit_micro_patch4_28_gap',
            '--image-size', '32', '--hidden-size', '16', '--num-heads', '2', '--ffn-size', '32', '--fusion-depth', '1',
            '--per-device-batch', '4', '--batch-size', '8', '--lr', '1e-3', '--num-workers', '0', '--no-progress',
            '--threads', '1', *extra]


def _log(out):
    with open(os.path.join(out, 'log.txt')) as f:
        return [json.loads(line) for line in f]


def test_vqa_training_resumes_exactly(tmp_path):
    make_vqa_root(tmp_path)
    common = ['--train-splits', 'train2014', '--eval-split', 'val2014', '--eval-limit', '8', '--epochs', '2']
    assert train.main(_args(tmp_path, tmp_path / 'full', *common)) == 0
    assert train.main(_args(tmp_path, tmp_path / 'split', *common, '--stop-after', '1')) == 0
    assert len(_log(tmp_path / 'split')) == 1
    assert train.main(_args(tmp_path, tmp_path / 'split', *common, '--resume', 'auto')) == 0
    full, split = _log(tmp_path / 'full'), _log(tmp_path / 'split')
    assert [r['train_loss'] for r in full] == [r['train_loss'] for r in split]
    a = torch.load(tmp_path / 'full' / 'checkpoint.pth', weights_only=True)
    b = torch.load(tmp_path / 'split' / 'checkpoint.pth', weights_only=True)
    assert a['epoch'] == b['epoch'] == 1
    for k, v in a['model'].items():
        assert torch.equal(v, b['model'][k]), k
    record = full[-1]
    assert 0.0 <= record['eval_vqa_score'] <= 100.0 and 'eval_mask_positive' in record
    assert 'train_var' in record and 'train_prior' in record
    assert json.loads((tmp_path / 'full' / 'answers.json').read_text()) == ['2', 'yes', 'no']
    assert os.listdir(tmp_path / 'full' / 'tensorboard')


def test_flickr_training_and_recall_evaluation(tmp_path):
    make_flickr_root(tmp_path)
    extra = ['--task', 'flickr', '--epochs', '1', '--negatives', '3', '--prior-mode', 'release', '--amp', 'bf16',
             '--per-device-batch', '2', '--batch-size', '4', '--eval-chunk', '4']
    assert train.main(_args(tmp_path, tmp_path / 'out', *extra)) == 0
    [record] = _log(tmp_path / 'out')
    assert set(k for k in record if k.startswith('eval_tr_') or k.startswith('eval_ir_')) == \
        {f'eval_{d}_r{k}' for d in ('tr', 'ir') for k in (1, 5, 10)}
    assert record['eval_tr_r10'] == 100.0  # 3 test images: every caption is within the top 10
    assert 'train_itm' in record and 'train_var' not in record  # release mode: no variational loss in retrieval


def test_missing_files_are_named(tmp_path, capsys):
    assert train.main(_args(tmp_path, tmp_path / 'out')) == 2
    assert 'v2_OpenEnded_mscoco_train2014_questions.json' in capsys.readouterr().err
    assert train.main(_args(tmp_path, tmp_path / 'out', '--task', 'flickr')) == 2
    assert 'dataset_flickr30k.json' in capsys.readouterr().err
    make_vqa_root(tmp_path)
    assert train.main(_args(tmp_path, tmp_path / 'out', '--batch-size', '6')) == 2
    assert 'not a multiple' in capsys.readouterr().err
