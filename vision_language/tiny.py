"""Tiny configurations (random weights) for tests, the offline task and quick checks on a CPU."""
from transformers import RobertaConfig

from vision_language.model import VLConfig

__all__ = ['tiny_roberta_config', 'tiny_vl_config', 'MICRO_IMAGE_KWARGS']

#: the zoo's micro AbSViT/ViT as a 3-channel, 32x32, patch-8, class-token encoder
MICRO_IMAGE_KWARGS = dict(in_chans=3, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def tiny_roberta_config(vocab_size: int = 120, hidden_size: int = 24, layers: int = 1) -> RobertaConfig:
    """A randomly initialised RoBERTa small enough for unit tests."""
    return RobertaConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
                         num_attention_heads=2, intermediate_size=2 * hidden_size, max_position_embeddings=64,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny_vl_config(prior_mode: str = 'paper', top_down: bool = True, **overrides) -> VLConfig:
    """A VL model a few thousand parameters wide: tiny RoBERTa, micro (Ab)SViT, 2+2 fusion layers."""
    kwargs = dict(text_encoder=tiny_roberta_config(),
                  image_encoder='absvit_micro_patch4_28_gap' if top_down else 'vit_micro_patch4_28_gap',
                  image_kwargs=dict(MICRO_IMAGE_KWARGS), hidden_size=16, num_heads=2, ffn_size=32, fusion_depth=2,
                  dropout=0.0, num_answers=7, prior_mode=prior_mode)
    kwargs.update(overrides)
    return VLConfig(**kwargs)
