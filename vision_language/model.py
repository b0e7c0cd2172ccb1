"""The vision-language model: METER's layout with a top-down zoo backbone (AbSViT, AbS-RVT, AbS-FAN, ...)
steered by the text.

text --AutoModel--> hidden (B, L, Dt) --Linear--> (B, L, H) + type 0 --\\
                      \\-- text prior (B, Dt) --prompt_decoder--> steers the image encoder's pass 2
image --zoo model--> tokens (B, N, Di) --Linear--> (B, N, H) + type 1 --> co-attention fusion
fusion --> poolers (first token, Linear + tanh) --> cls_feats (B, 2H) --> VQA / ITM / ranking heads

Prior modes (``VLConfig.prior_mode``): one row each of ``vision_language.image_encoder.PRIOR_MODES``, which
says which text vector steers each task, how it reweights the image tokens, and which losses the training
adds (``paper``: first token, ``alpha * mask * z`` with alpha 10, prior and variational loss in every task;
``release``: mean over all positions for VQA and the end-of-sequence token for retrieval, the rank-1
``(z * mask) @ (p p^T) * 5``, no prior loss, the variational loss only in VQA).
"""
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Union

import torch
import torch.nn as nn
from transformers import AutoModel, PretrainedConfig

from vision_language.fusion import CoAttentionFusion, FirstTokenPooler, co_attention_config
from vision_language.image_encoder import TASKS, ImageOutput, PriorMode, build_image_encoder, resolve_prior_mode

__all__ = ['VLConfig', 'VLOutput', 'VLModel', 'build_text_encoder', 'text_prior', 'TASKS']


@dataclass
class VLConfig:
    """Sizes and choices of the model; the defaults are METER-B with RoBERTa-base and AbSViT-B/16."""
    text_encoder: Union[str, PretrainedConfig] = 'roberta-base'  #: hub name, local path, or a config (random init)
    local_files_only: bool = False
    image_encoder: str = 'absvit_base_patch16_224'  #: a zoo name; a bottom-up one (vit_base_patch16_224) is a baseline
    image_kwargs: Dict[str, Any] = field(default_factory=dict)  #: overrides of the zoo config (img_size, ...)
    hidden_size: int = 768
    num_heads: int = 12
    ffn_size: int = 3072
    fusion_depth: int = 6
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    num_answers: int = 3129
    prior_mode: str = 'paper'
    alpha: Optional[float] = None  #: None: the mode's (paper 10, release 5)
    prior_temperature: float = 0.07  #: initial temperature of the CLIP-style prior loss (learned, as CLIP)

    def check(self) -> 'VLConfig':
        resolve_prior_mode(self.prior_mode)
        if self.hidden_size % self.num_heads:
            raise ValueError(f'hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}')
        return self


@dataclass
class VLOutput:
    cls_feats: torch.Tensor          #: (B, 2H): pooled text and image sides
    text_feats: torch.Tensor         #: (B, L, H) after fusion
    image_feats: torch.Tensor        #: (B, N, H) after fusion
    image: ImageOutput               #: the image encoder's output (mask, prior, variational loss)


def build_text_encoder(cfg: VLConfig) -> nn.Module:
    """``AutoModel`` of ``cfg.text_encoder`` without its pooler (METER pools after the fusion)."""
    if isinstance(cfg.text_encoder, PretrainedConfig):
        model = AutoModel.from_config(cfg.text_encoder)
    else:
        model = AutoModel.from_pretrained(cfg.text_encoder, local_files_only=cfg.local_files_only)
    if getattr(model, 'pooler', None) is not None:
        model.pooler = None  # never used: DDP would see parameters without gradients
    return model


def text_prior(hidden: torch.Tensor, attention_mask: torch.Tensor, prior_mode: str, task: str) -> torch.Tensor:
    """The text vector that steers the image encoder: the mode's choice for ``task`` (``PRIOR_MODES``)."""
    if task not in TASKS:
        raise ValueError(f'task must be one of {TASKS}, got {task!r}')
    return resolve_prior_mode(prior_mode).text_vector[task](hidden, attention_mask)


class VLModel(nn.Module):
    """Text encoder, steered image encoder, co-attention fusion, poolers and the task heads."""

    def __init__(self, cfg: VLConfig):
        super().__init__()
        self.cfg = cfg.check()
        H = cfg.hidden_size
        self.text_encoder = build_text_encoder(cfg)
        text_dim = self.text_encoder.config.hidden_size
        self.image_encoder = build_image_encoder(cfg.image_encoder, text_dim, cfg.prior_mode, cfg.alpha,
                                                 **cfg.image_kwargs)
        self.cross_modal_text_transform = nn.Linear(text_dim, H)
        self.cross_modal_image_transform = nn.Linear(self.image_encoder.width, H)
        self.token_type_embeddings = nn.Embedding(2, H)
        fusion_cfg = co_attention_config(H, cfg.num_heads, cfg.ffn_size, cfg.dropout, cfg.layer_norm_eps)
        self.fusion = CoAttentionFusion(fusion_cfg, cfg.fusion_depth)
        self.text_pooler, self.image_pooler = FirstTokenPooler(H), FirstTokenPooler(H)
        self.vqa_head = nn.Sequential(nn.Linear(2 * H, 2 * H), nn.LayerNorm(2 * H), nn.GELU(),
                                      nn.Linear(2 * H, cfg.num_answers))
        self.itm_head = nn.Linear(2 * H, 2)
        self.rank_head = nn.Linear(2 * H, 1)
        self.prior_logit_scale = (nn.Parameter(torch.tensor(1.0 / cfg.prior_temperature).log())
                                  if self.uses_prior_loss else None)
        self._init_new_weights()

    @property
    def top_down(self) -> bool:
        return self.image_encoder.top_down

    @property
    def prior_spec(self) -> PriorMode:
        """The row of ``cfg.prior_mode``: what the text steers with and which losses the training adds."""
        return resolve_prior_mode(self.cfg.prior_mode)

    @property
    def uses_prior_loss(self) -> bool:
        return self.image_encoder.top_down and self.prior_spec.prior_loss

    def uses_var_loss(self, task: str) -> bool:
        return self.image_encoder.top_down and task in self.prior_spec.var_loss_tasks

    def _init_new_weights(self) -> None:
        """BERT's init (normal 0.02, zero bias) for everything METER adds; the encoders keep theirs."""
        for module in (self.cross_modal_text_transform, self.cross_modal_image_transform, self.token_type_embeddings,
                       self.fusion, self.text_pooler, self.image_pooler, self.vqa_head, self.itm_head):
            for m in module.modules():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
                if isinstance(m, nn.LayerNorm):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
        self.init_rank_head_from_itm()

    @torch.no_grad()
    def init_rank_head_from_itm(self) -> None:
        """The ranking head starts as the ITM head's 'match' logit (METER's retrieval fine-tuning)."""
        self.rank_head.weight.copy_(self.itm_head.weight[1:])
        self.rank_head.bias.copy_(self.itm_head.bias[1:])

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                task: str = 'vqa', var_loss: bool = False, text_hidden: Optional[torch.Tensor] = None,
                prior: Optional[torch.Tensor] = None) -> VLOutput:
        """One image per text: ``images`` (B, 3, h, w), ``input_ids``/``attention_mask`` (B, L).

        ``text_hidden``: the text encoder's output, when it was computed once for a frozen encoder;
        ``prior`` (B, text_dim): steer with another text's prior (the swap diagnostic)."""
        if images.shape[0] != input_ids.shape[0]:
            raise ValueError(f'{images.shape[0]} images for {input_ids.shape[0]} texts: give one image per text')
        hidden = text_hidden if text_hidden is not None else \
            self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.top_down and prior is None:
            prior = text_prior(hidden, attention_mask, self.cfg.prior_mode, task)
        image = self.image_encoder(images, prior, var_loss=var_loss and self.uses_var_loss(task))
        text = self.cross_modal_text_transform(hidden)
        img = self.cross_modal_image_transform(image.tokens)
        text = text + self.token_type_embeddings(torch.zeros_like(input_ids))
        img = img + self.token_type_embeddings(torch.ones(img.shape[:2], dtype=torch.long, device=img.device))
        text, img = self.fusion(text, img, attention_mask, None)
        cls_feats = torch.cat([self.text_pooler(text), self.image_pooler(img)], dim=-1)
        return VLOutput(cls_feats, text, img, image)
