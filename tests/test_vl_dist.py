"""The VQA evaluation of ``vision_language.train`` under torchrun (2 CPU processes, gloo): each process scores
its own shard of the questions, the VQA score equals one process's on the same weights, and rank 0 writes the
results file with every question once, in the split's order."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from test_pipeline_helpers import env_one_thread
from test_vl_train import _args, _jpg, _log, make_vqa_root
from vision_language import train


def _add_test_dev(root, n=31):
    """test-dev2015 questions (no annotations) and their test2015 images."""
    qs = [{'image_id': k % 5, 'question': ('how many dogs?', 'is it red?', 'is it blue?')[k % 3],
           'question_id': 5000 + 7 * k} for k in range(n)]
    with open(os.path.join(root, 'v2_OpenEnded_mscoco_test-dev2015_questions.json'), 'w') as f:
        json.dump({'questions': qs}, f)
    for img in range(5):
        _jpg(os.path.join(root, 'test2015', f'COCO_test2015_{img:012d}.jpg'), 20 + img)
    return [q['question_id'] for q in qs]


def _results(path):
    with open(path) as f:
        return [(r['question_id'], r['answer']) for r in json.load(f)]


@pytest.mark.slow
def test_vqa_evaluation_is_split_across_two_processes(tmp_path):
    make_vqa_root(tmp_path)  # 30 val2014 questions
    test_dev = _add_test_dev(tmp_path)
    # a checkpoint of the initial weights (lr 0), whose answers differ between questions
    common = ['--train-splits', 'train2014', '--epochs', '1', '--lr', '0']
    assert train.main(_args(tmp_path, tmp_path / 'train', *common)) == 0
    ckpt = tmp_path / 'train' / 'checkpoint.pth'

    def eval_args(out, split):
        return _args(tmp_path, out, *common, '--eval-only', '--resume', str(ckpt), '--eval-split', split,
                     '--results-json', str(out / 'results.json'))

    # one process: the reference
    for split in ('val2014', 'test-dev2015'):
        assert train.main(eval_args(tmp_path / f'one_{split}', split)) == 0
    (one,) = _log(tmp_path / 'one_val2014')
    assert one['world_size'] == 1 and one['eval_n'] == 30
    one_val = _results(tmp_path / 'one_val2014' / 'results.json')
    assert [q for q, _ in one_val] == list(range(1000, 1030))
    assert len({a for _, a in one_val}) > 1  # not one answer to everything

    # two processes, launched as a user would
    for split, n, shards in (('val2014', 30, '15 + 15'), ('test-dev2015', 31, '16 + 15')):
        out = tmp_path / f'two_{split}'
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
               '-m', 'vision_language.train', *eval_args(out, split)]
        r = subprocess.run(cmd, cwd=ROOT, env=env_one_thread(), capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        # each process scored its half: questions rank, rank + 2, ...
        assert f'VQA evaluation of {split}: {n} questions, {shards} on 2 process' in r.stdout, r.stdout
        (two,) = _log(out)
        assert two['world_size'] == 2 and two['eval_n'] == n
        two_results = _results(out / 'results.json')
        assert two_results == _results(tmp_path / f'one_{split}' / 'results.json')  # every question once, same order
        if split == 'val2014':
            assert two['eval_vqa_score'] == pytest.approx(one['eval_vqa_score'], rel=1e-12, abs=1e-12)
            assert two['eval_mask_mean'] == pytest.approx(one['eval_mask_mean'], rel=1e-6)
        else:
            assert [q for q, _ in two_results] == test_dev and 'eval_vqa_score' not in two


def test_merged_results_hold_every_question_once():
    from vision_language.tasks import _merge_shards
    shards = [([1, 3, 5], ['a', 'c', 'e']), ([2, 4], ['b', 'd'])]  # the shards of ranks 0 and 1 of [1..5]
    assert _merge_shards(shards, [1, 2, 3, 4, 5]) == ([1, 2, 3, 4, 5], ['a', 'b', 'c', 'd', 'e'])
    with pytest.raises(RuntimeError, match='twice'):
        _merge_shards([([1, 2], ['a', 'b']), ([2], ['b'])], [1, 2])
    with pytest.raises(RuntimeError, match='not evaluated'):
        _merge_shards([([1], ['a']), ([], [])], [1, 2])
