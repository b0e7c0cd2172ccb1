"""VQA answer rules and score, recall@K, the optimiser groups and the schedule (hand examples)."""
import json

import pytest
import torch

from vision_language.model import VLModel
from vision_language.optim import build_optimizer, param_groups, parameter_part, warmup_linear_decay
from vision_language.retrieval import RetrievalDataError, read_flickr30k, recall_at_k
from vision_language.tiny import tiny_vl_config
from vision_language.vqa import (VQADataError, answer_vocabulary, normalize_answer, official_accuracy, read_vqa,
                                 soft_score, soft_targets, targets_tensor, vqa_score, write_results)


@pytest.mark.parametrize('raw, expected', [
    ('Two', '2'), ('two dogs.', '2 dogs'), ('A dog', 'dog'), ('the Cat', 'cat'), ('none', '0'),
    ('yes!', 'yes'), ('dont', "don't"), ('isnt it', "isn't it"), ('couldnt\'ve', "couldn't've"),
    ('1,000', '1000'), ('3.5', '3.5'), ('red/white', 'red white'), ('  ten\n', '10'), ("it's", "it's"),
    ('its', 'its'), ('well', 'well'), ('black - white', 'black white'),
])
def test_official_answer_normalisation(raw, expected):
    assert normalize_answer(raw) == expected


def test_vocabulary_keeps_answers_occurring_min_count_times_after_normalising():
    answers = ['two'] * 5 + ['2'] * 4 + ['yes'] * 9 + ['no'] * 8 + ['blue'] * 20
    vocab = answer_vocabulary(answers)  # '2' counts 9 once "two" is normalised; 'no' (8) is out
    assert vocab == {'blue': 0, '2': 1, 'yes': 2}
    assert answer_vocabulary(answers, min_count=8) == {'blue': 0, '2': 1, 'yes': 2, 'no': 3}


def test_soft_scores_and_the_official_leave_one_out_accuracy():
    assert [soft_score(n) for n in range(6)] == pytest.approx([0, 0.3, 0.6, 0.9, 1.0, 1.0])
    answers = ['2'] * 3 + ['3'] * 7
    # leave out one of the three '2': 2 matches -> 2/3 (3 times); otherwise 3 matches -> 1 (7 times)
    assert official_accuracy('two', answers) == pytest.approx((3 * 2 / 3 + 7) / 10)
    assert official_accuracy('2', ['2'] + ['x'] * 9) == pytest.approx(9 * (1 / 3) / 10)
    vocab = {'2': 0, '3': 1, 'dog': 2}
    assert soft_targets(['two', 'Two', '3', 'cat'], vocab) == pytest.approx({0: 0.6, 1: 0.3})


def test_vqa_score_is_the_soft_score_of_the_argmax():
    targets = targets_tensor([{0: 1.0, 1: 0.3}, {2: 0.6}, {}], 3)
    logits = torch.tensor([[0.0, 5.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert vqa_score(logits, targets).item() == pytest.approx(0.3 + 0.6 + 0.0)


def test_recall_at_k_against_a_hand_computed_matrix():
    # 3 images, 6 texts; texts 2i and 2i+1 describe image i
    s = torch.tensor([[0.9, 0.1, 0.8, 0.0, 0.2, 0.3],    # image 0: top text 0 (own)
                      [0.7, 0.2, 0.1, 0.3, 0.6, 0.5],    # image 1: ranking 0,4,5,3 -> own text 3 at rank 4
                      [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])   # image 2: top text 5 (own)
    r = recall_at_k(s, [0, 0, 1, 1, 2, 2], ks=(1, 2, 5))
    assert r['tr_r1'] == pytest.approx(200 / 3) and r['tr_r2'] == pytest.approx(200 / 3)
    assert r['tr_r5'] == pytest.approx(100)
    # per text, its image's rank in the column: t0 1st, t1 3rd, t2 3rd, t3 2nd, t4 2nd, t5 1st
    assert r['ir_r1'] == pytest.approx(100 * 2 / 6)
    assert r['ir_r2'] == pytest.approx(100 * 4 / 6)
    assert r['ir_r5'] == pytest.approx(100)


def test_every_parameter_in_exactly_one_group_with_its_multiplier():
    model = VLModel(tiny_vl_config('paper'))
    groups = param_groups(model, lr=1e-5, multipliers={'heads': 5.0})
    seen = [id(p) for g in groups for p in g['params']]
    assert sorted(seen) == sorted(id(p) for p in model.parameters()) and len(seen) == len(set(seen))
    expected = {'base': 1.0, 'cross_modal': 10.0, 'heads': 5.0, 'feedback': 3.0}
    for g in groups:
        assert g['lr'] == pytest.approx(1e-5 * expected[g['part']])
        for name in g['names']:
            assert parameter_part(name) == g['part']
            owner = model.get_submodule(name.rsplit('.', 1)[0]) if '.' in name else model
            no_decay = name.endswith('.bias') or isinstance(owner, torch.nn.LayerNorm) \
                or name.endswith(('pos_embed', 'cls_token', 'prior_logit_scale'))
            assert (g['weight_decay'] == 0.0) == no_decay, name
    names = {n: g['part'] for g in groups for n in g['names']}
    assert names['image_encoder.prompt_decoder.bias'] == 'feedback'  # trained (the release left it out)
    assert names['image_encoder.vit.decoders.0.linear.weight'] == 'feedback'
    assert names['fusion.text_layers.0.crossattention.self.query.weight'] == 'cross_modal'
    assert names['vqa_head.3.weight'] == 'heads' and names['text_encoder.embeddings.word_embeddings.weight'] == 'base'
    opt = build_optimizer(model)
    assert opt.defaults['betas'] == (0.9, 0.98) and opt.defaults['eps'] == 1e-8


def test_warmup_then_linear_decay_to_zero():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = warmup_linear_decay(opt, total_steps=20, warmup=0.1)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]['lr'])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0 * 18 / 18])
    assert lrs[-1] == pytest.approx(1 / 18) and opt.param_groups[0]['lr'] == pytest.approx(0.0)


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_vqa_reader_on_the_official_layout(tmp_path):
    _write(tmp_path / 'v2_OpenEnded_mscoco_val2014_questions.json',
           {'questions': [{'image_id': 42, 'question': 'How many?', 'question_id': 420}]})
    _write(tmp_path / 'v2_mscoco_val2014_annotations.json',
           {'annotations': [{'question_id': 420, 'image_id': 42, 'multiple_choice_answer': 'two',
                             'answers': [{'answer': 'two', 'answer_id': i} for i in range(10)]}]})
    (tmp_path / 'val2014').mkdir()
    [item] = read_vqa(str(tmp_path), 'val2014')
    assert item.image_path.endswith('val2014/COCO_val2014_000000000042.jpg') and item.answers == ['two'] * 10
    with pytest.raises(VQADataError, match='v2_OpenEnded_mscoco_train2014_questions.json'):
        read_vqa(str(tmp_path), 'train2014')
    with pytest.raises(VQADataError, match='unknown VQAv2 split'):
        read_vqa(str(tmp_path), 'val')
    (tmp_path / 'val2014').rmdir()
    with pytest.raises(VQADataError, match='COCO image folder'):
        read_vqa(str(tmp_path), 'val2014')
    write_results(str(tmp_path / 'r.json'), [420], ['2'])
    assert json.loads((tmp_path / 'r.json').read_text()) == [{'question_id': 420, 'answer': '2'}]


def test_flickr_reader_on_karpathys_layout(tmp_path):
    with pytest.raises(RetrievalDataError, match='dataset_flickr30k.json'):
        read_flickr30k(str(tmp_path))
    images = [{'filename': f'{i}.jpg', 'split': s, 'sentences': [{'raw': f'cap {i}.{j}'} for j in range(5)]}
              for i, s in enumerate(['train', 'test', 'test'])]
    _write(tmp_path / 'dataset_flickr30k.json', {'images': images, 'dataset': 'flickr30k'})
    (tmp_path / 'flickr30k-images').mkdir()
    d = read_flickr30k(str(tmp_path), 'test')
    assert [p.rsplit('/', 1)[1] for p in d.image_paths] == ['1.jpg', '2.jpg']
    assert d.text_to_image == [0] * 5 + [1] * 5 and d.captions[5] == 'cap 2.0'
    with pytest.raises(RetrievalDataError, match='no image of split'):
        read_flickr30k(str(tmp_path), 'val')
