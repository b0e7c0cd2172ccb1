"""VQAv2 and Flickr30K as training tasks: their datasets, loss modules (what DDP wraps: the whole
step, so the heads' gradients are synchronised too) and evaluations with steering diagnostics.

Each task's figures go through its ``evaluator`` (``evaluation.Evaluator``, the interface of main.py's
tasks too): ``VQAEvaluator`` (VQA score) and ``RetrievalEvaluator`` (recall, ranked by ``rsum``). Its ``key``
is what ``train.py`` keeps the best of, in ``TrainState``."""
import json
import logging
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

import misc
from engine import autocast
from evaluation import Evaluator
from vision_language.data import FlickrImages, FlickrTrainDataset, VQADataset, image_transform
from vision_language.model import VLModel, text_prior
from vision_language.objectives import itm_loss, rank_loss, total_loss, vqa_loss
from vision_language.retrieval import read_flickr30k, recall_at_k, score_matrix
from vision_language.steering import mask_statistics, swap_statistics
from vision_language.vqa import answer_vocabulary, read_vqa, vqa_score, write_results

__all__ = ['TASK_HEAD_MULT', 'build_task', 'VQATask', 'FlickrTask', 'VQAEvaluator', 'RetrievalEvaluator']

_logger = logging.getLogger('absvit')
TASK_HEAD_MULT = {'vqa': 50.0, 'flickr': 5.0}  # METER's lr multiplier of the task heads


def _mask_terms(model: VLModel, out) -> Dict[str, torch.Tensor]:
    if out.image.mask is None:
        return {}
    m = out.image.mask[:, model.image_encoder.num_prefix_tokens:].detach()
    return {'mask_positive': (m > 0).float().mean(), 'mask_mean': m.mean()}


class _TaskLoss(nn.Module):
    """A task's training loss over the model (which it holds, so that DDP wraps one module): the task's own
    objective plus the variational and prior terms weighted as given."""

    def __init__(self, model: VLModel, var_weight: float, prior_weight: float):
        super().__init__()
        self.model, self.var_weight, self.prior_weight = model, var_weight, prior_weight


class VQALoss(_TaskLoss):
    """Binary cross-entropy over the answer vocabulary's soft scores."""

    def forward(self, batch):
        m = self.model
        out = m(batch['images'], batch['input_ids'], batch['attention_mask'], 'vqa', var_loss=True)
        loss, terms = total_loss(m, out, vqa_loss(m.vqa_head(out.cls_feats).float(), batch['targets']), 'vqa',
                                 self.var_weight, self.prior_weight)
        return loss, {**terms, **_mask_terms(m, out)}


class FlickrLoss(_TaskLoss):
    """Ranking loss over (1 + negatives) captions per image plus ITM with half negatives."""

    def forward(self, batch):
        m = self.model
        B, K = batch['rank_input_ids'].shape[:2]
        images = batch['images'].repeat_interleave(K, 0)
        out = m(images, batch['rank_input_ids'].flatten(0, 1), batch['rank_attention_mask'].flatten(0, 1),
                'retrieval', var_loss=True)
        scores = m.rank_head(out.cls_feats).float().view(B, K)
        matched = torch.zeros(B, K, dtype=torch.bool, device=scores.device)
        matched[:, 0] = True
        loss, terms = total_loss(m, out, rank_loss(scores), 'retrieval', self.var_weight, self.prior_weight,
                                 matched=matched.flatten())
        out2 = m(batch['images'], batch['itm_input_ids'], batch['itm_attention_mask'], 'retrieval')
        itm = itm_loss(m.itm_head(out2.cls_feats).float(), batch['is_match'])
        return loss + itm, {**terms, 'itm': itm.detach(), **_mask_terms(m, out)}


class VQAEvaluator(Evaluator):
    """The VQA score (%, what ranks epochs) and the steering diagnostics of ``VQATask._eval_batch``.

    ``update(outputs, targets)``: the batch's statistics (each a mean over its questions; the diagnostics
    only on batches that have them) and its answer targets (one row per question). Each statistic is the
    mean over the questions it covers: sums of batch mean x batch size, kept on the host and summed over the
    processes by ``compute``. A split without answers (test-dev) has no VQA score, only diagnostics.
    """
    key, label = 'vqa_score', 'VQA score'
    #: What ``_eval_batch`` may report (the steering diagnostics only for AbSViT, on batches of two or more).
    STATS = ('vqa_score', 'mask_positive', 'mask_mean', 'swap_answer_change', 'swap_score_drop')

    def __init__(self, has_answers: bool = True):
        self.has_answers = has_answers
        self.reset()

    def reset(self, device: Optional[torch.device] = None) -> None:
        self._device = torch.device('cpu') if device is None else device  # where the sums are all-reduced
        self._sums = torch.zeros(2, len(self.STATS), dtype=torch.float64)  # per statistic: sum, questions

    def update(self, outputs: Dict[str, float], targets: torch.Tensor) -> None:
        n = targets.shape[0]
        for k, v in outputs.items():
            i = self.STATS.index(k)
            self._sums[0, i] += v * n
            self._sums[1, i] += n

    def compute(self) -> Dict[str, Any]:
        sums = misc.all_reduce_sum(self._sums.to(self._device)).cpu()
        out = {k: sums[0, i].item() / sums[1, i].item() for i, k in enumerate(self.STATS)
               if sums[1, i] > 0 and (self.has_answers or k != 'vqa_score')}
        if 'vqa_score' in out:
            out['vqa_score'] *= 100.0
        out['n'] = int(sums[1, 0].item())
        return out


class RetrievalEvaluator(Evaluator):
    """TR@K / IR@K (%, K = 1, 5, 10) and their sum ``rsum`` (what ranks epochs) from image-caption scores.

    ``update(outputs, targets)``: scores of every image against a block of captions (images x captions; under
    DDP ``score_matrix`` has already summed every process's rows) and the image of each of those captions.
    """
    key, label = 'rsum', 'R-sum'

    def __init__(self):
        self.reset()

    def reset(self, device: Optional[torch.device] = None) -> None:
        self._scores: List[torch.Tensor] = []
        self._owners: List[int] = []

    def update(self, outputs: torch.Tensor, targets: Sequence[int]) -> None:
        self._scores.append(outputs.cpu())
        self._owners.extend(targets)

    def compute(self) -> Dict[str, Any]:
        r = recall_at_k(torch.cat(self._scores, 1), self._owners)
        r['rsum'] = sum(r.values())
        return r


class VQATask:
    has_eval = True

    def __init__(self, args):
        self.args = args
        self.train_items = [it for s in args.train_splits.split(',') for it in read_vqa(args.data_root, s)]
        self.vocab = answer_vocabulary(it.multiple_choice_answer for it in self.train_items)
        self.answers = list(self.vocab)
        self.num_answers = len(self.vocab)
        self.eval_items = read_vqa(args.data_root, args.eval_split) if args.eval_split else []
        if args.eval_limit:
            self.eval_items = self.eval_items[:args.eval_limit]
        self.evaluator = VQAEvaluator(has_answers=any(it.answers for it in self.eval_items))
        if misc.is_main_process():
            os.makedirs(args.output_dir, exist_ok=True)
            with open(os.path.join(args.output_dir, 'answers.json'), 'w') as f:
                json.dump(self.answers, f)
        _logger.info(f'VQAv2: {len(self.train_items)} training questions ({args.train_splits}), '
                     f'{self.num_answers} answers occurring >= 9 times')

    def train_dataset(self, transform):
        items = self.train_items[:self.args.limit] if self.args.limit else self.train_items
        return VQADataset(items, self.vocab, transform)

    def freeze_unused_heads(self, model: VLModel) -> None:
        for head in (model.itm_head, model.rank_head):
            head.requires_grad_(False)

    def loss_module(self, model, args):
        return VQALoss(model, args.var_weight, args.prior_weight)

    @torch.no_grad()
    def evaluate(self, model: VLModel, args, device, amp_dtype, collate) -> Dict[str, float]:
        """VQA score on a split with answers (and the diagnostics); answers JSON for a test split.

        Under torchrun each process scores its shard (questions rank, rank + world, ...); the sums and counts
        are all-reduced, so every process returns the metrics of the whole split (``n``: questions scored),
        and the results file is gathered and written once, by rank 0, in the split's order. The swap
        diagnostic steers each question by another question of its batch, so it depends on the batching
        (and the world size); the VQA score and the mask statistics do not."""
        if not self.eval_items:
            return {}
        from vision_language.train import make_loader
        items = self.eval_items
        loader = make_loader(VQADataset(items, self.vocab, image_transform(args.image_size, False)), args, False, 0,
                             collate)
        model.eval()
        self.evaluator.reset(device)
        qids: List[int] = []
        preds: List[str] = []
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(device, amp_dtype):
                self.evaluator.update(self._eval_batch(model, batch, qids, preds), batch['targets'])
        model.train()
        out = self.evaluator.compute()
        per_rank = torch.zeros(misc.get_world_size(), dtype=torch.long)
        per_rank[misc.get_rank()] = len(qids)
        per_rank = misc.all_reduce_sum(per_rank.to(device)).tolist()
        _logger.info(f'VQA evaluation of {args.eval_split}: {sum(per_rank)} questions, '
                     f'{" + ".join(map(str, per_rank))} on {len(per_rank)} process(es)')
        if args.results_json:
            shards = misc.all_gather_objects((qids, preds))
            if misc.is_main_process():
                qids, preds = _merge_shards(shards, [it.question_id for it in items])
                write_results(args.results_json, qids, preds)
        return out

    def _eval_batch(self, model: VLModel, batch, qids, preds) -> Dict[str, float]:
        ids, mask = batch['input_ids'], batch['attention_mask']
        out = model(batch['images'], ids, mask, 'vqa')
        logits = model.vqa_head(out.cls_feats).float()
        pred = logits.argmax(1)
        qids.extend(batch['question_id'].tolist())
        preds.extend(self.answers[i] for i in pred.tolist())
        stats = {'vqa_score': vqa_score(logits, batch['targets']).item() / len(pred)}
        if model.top_down and len(pred) > 1:
            stats.update(mask_statistics(out.image.mask, model.image_encoder.num_prefix_tokens))
            hidden = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            other = text_prior(hidden, mask, model.cfg.prior_mode, 'vqa').roll(1, 0)
            swapped = model.vqa_head(model(batch['images'], ids, mask, 'vqa', prior=other).cls_feats).argmax(1)
            best = batch['targets'].argmax(1)
            stats.update(swap_statistics(pred, swapped, best))
        return stats


class FlickrTask:
    has_eval = True
    num_answers = 1  # no VQA head is trained; a one-answer head keeps the model's layout

    def __init__(self, args):
        self.args = args
        self.evaluator = RetrievalEvaluator()
        self.train_data = read_flickr30k(args.data_root, 'train')
        self.eval_data = read_flickr30k(args.data_root, args.eval_split or 'test')

    def train_dataset(self, transform):
        data = self.train_data
        if self.args.limit:
            n = self.args.limit
            data = type(data)(data.image_paths, data.captions[:n], data.text_to_image[:n])
        return FlickrTrainDataset(data, transform, self.args.negatives)

    def freeze_unused_heads(self, model: VLModel) -> None:
        model.vqa_head.requires_grad_(False)

    def loss_module(self, model, args):
        return FlickrLoss(model, args.var_weight, args.prior_weight)

    @torch.no_grad()
    def evaluate(self, model: VLModel, args, device, amp_dtype, collate) -> Dict[str, float]:
        """TR/IR@1/5/10 from every (image, caption) score of the split (``eval_limit`` images)."""
        data = self.eval_data
        n_img = min(args.eval_limit or len(data.image_paths), len(data.image_paths))
        keep = [j for j, i in enumerate(data.text_to_image) if i < n_img]
        images = torch.stack([FlickrImages(data, image_transform(args.image_size, False))[i] for i in range(n_img)])
        texts = collate.tokens([data.captions[j] for j in keep])
        model.eval()

        def score(img, ids, mask):
            with autocast(device, amp_dtype):
                return model.rank_head(model(img, ids, mask, 'retrieval').cls_feats)
        start = time.time()
        scores = score_matrix(score, images.to(device), texts['input_ids'].to(device),
                              texts['attention_mask'].to(device), args.eval_chunk)
        seconds = time.time() - start
        model.train()
        self.evaluator.reset(device)
        self.evaluator.update(scores, [data.text_to_image[j] for j in keep])
        r = self.evaluator.compute()
        r['eval_seconds_per_1k_x_5k'] = seconds * 5e6 / max(1, n_img * len(keep))
        return r


def _merge_shards(shards, order: List[int]):
    """The processes' ``(question ids, answers)`` as one list in ``order`` (the split's), each question once."""
    answer = {}
    for ids, answers in shards:
        for q, a in zip(ids, answers):
            if q in answer:
                raise RuntimeError(f'question {q} was evaluated twice')
            answer[q] = a
    missing = [q for q in order if q not in answer]
    if missing or len(answer) != len(order):
        raise RuntimeError(f'{len(missing)} questions were not evaluated (e.g. {missing[:3]}); '
                           f'{len(answer)} answers for {len(order)} questions')
    return order, [answer[q] for q in order]


def build_task(args):
    return VQATask(args) if args.task == 'vqa' else FlickrTask(args)
