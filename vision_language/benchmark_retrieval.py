"""What full cross-encoder retrieval evaluation costs on this machine, per 1k images x 5k captions
(Flickr30K test), extrapolated from a timed run on a few pairs.

    python -m vision_language.benchmark_retrieval [--image-encoder absvit_base_patch16_224] [--pairs 8]

Weights are random (the cost does not depend on them); sizes are METER-B's (RoBERTa-base, 224 px,
6+6 co-attention layers, text length 40). Three parts are timed separately: the text encoder (once
per caption), the image encoder and the fusion + ranking head. For AbSViT the image encoder takes the
caption as its prior, so it runs once per *pair*; for the bottom-up ViT it could run once per image.
"""
import argparse
import time

import torch
from transformers import RobertaConfig

from vision_language.model import VLConfig, VLModel

N_IMAGES, N_TEXTS = 1000, 5000


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


@torch.no_grad()
def measure(image_encoder: str, pairs: int, text_len: int, repeats: int) -> dict:
    """Seconds per caption (text encoder), per image forward, and per pair (fusion + head)."""
    text = RobertaConfig()  # roberta-base's sizes
    model = VLModel(VLConfig(text_encoder=text, image_encoder=image_encoder)).eval()
    ids = torch.randint(3, text.vocab_size, (pairs, text_len))
    mask = torch.ones_like(ids)
    images = torch.randn(pairs, 3, 224, 224)
    hidden = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    prior = hidden[:, 0] if model.top_down else None
    t_text = _timed(lambda: model.text_encoder(input_ids=ids, attention_mask=mask), repeats) / pairs
    t_image = _timed(lambda: model.image_encoder(images, prior), repeats) / pairs
    tokens = model.image_encoder(images, prior).tokens
    t_fusion = _timed(lambda: _fuse(model, hidden, tokens, ids, mask), repeats) / pairs
    return {'text_s': t_text, 'image_s': t_image, 'fusion_s': t_fusion, 'top_down': model.top_down}


def _fuse(model: VLModel, hidden, tokens, ids, mask):
    text = model.cross_modal_text_transform(hidden) + model.token_type_embeddings(torch.zeros_like(ids))
    img = model.cross_modal_image_transform(tokens)
    img = img + model.token_type_embeddings(torch.ones(img.shape[:2], dtype=torch.long))
    t, i = model.fusion(text, img, mask, None)
    return model.rank_head(torch.cat([model.text_pooler(t), model.image_pooler(i)], -1))


def extrapolate(m: dict) -> dict:
    """Seconds for 1k x 5k: captions once; images once per pair (top-down) or once per image."""
    image_runs = N_IMAGES * N_TEXTS if m['top_down'] else N_IMAGES
    total = N_TEXTS * m['text_s'] + image_runs * m['image_s'] + N_IMAGES * N_TEXTS * m['fusion_s']
    every_pair = N_IMAGES * N_TEXTS * (m['text_s'] + m['image_s'] + m['fusion_s'])
    return {'total_s': total, 'no_caching_s': every_pair}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--image-encoder', nargs='+', default=['vit_base_patch16_224', 'absvit_base_patch16_224'])
    p.add_argument('--pairs', type=int, default=4, help='pairs per timed batch')
    p.add_argument('--repeats', type=int, default=2)
    p.add_argument('--text-len', type=int, default=40)
    p.add_argument('--threads', type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f'{args.threads} thread(s), batches of {args.pairs} pairs, text length {args.text_len}, 224 px')
    for name in args.image_encoder:
        print(f'timing {name} ...', flush=True)
        m = measure(name, args.pairs, args.text_len, args.repeats)
        e = extrapolate(m)
        print(f'{name}: per caption (text encoder) {m["text_s"] * 1e3:.0f} ms, per image forward '
              f'{m["image_s"] * 1e3:.0f} ms, per pair (fusion + head) {m["fusion_s"] * 1e3:.0f} ms')
        cached = 'nothing on the image side: the prior is the caption' if m['top_down'] else \
            'image features once per image'
        print(f'  1k x 5k pairs: {e["total_s"] / 3600:.1f} h with what can be cached ({cached}), '
              f'{e["no_caching_s"] / 3600:.1f} h recomputing everything per pair', flush=True)


if __name__ == '__main__':
    main()
