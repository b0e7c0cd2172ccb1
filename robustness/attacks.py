"""White-box L-inf attacks in pixel space, through the input normalisation: FGSM and PGD.

Batches arrive normalised, ``(pixels - mean) / std``. An attack maps them back to pixels in [0, 1], perturbs
the pixels within ``eps`` (L-inf) of the clean ones, clamps to [0, 1], and returns the re-normalised batch.
Gradients come from ``torch.autograd.grad`` of the summed cross-entropy (the parameters' ``.grad`` are not
touched; a summed loss keeps fp16 gradients away from underflow, and only their sign is used). The model is
put in eval mode. Under AMP the forward pass runs in autocast and the loss in float32. For top-down models
(AbSViT) ``model(x)`` runs both passes, so the gradient flows through both.

Both are callables ``attack(model, images, targets) -> images`` for ``engine.evaluate(..., attack=...)``.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

FGSM_EPS = 1 / 255
PGD_EPS = 1 / 255
PGD_STEP = 0.5 / 255
PGD_STEPS = 5


def _stats(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32, device=like.device)
    if t.numel() == 1:
        t = t.expand(like.shape[1])
    if t.numel() != like.shape[1]:
        raise ValueError(f'normalisation has {t.numel()} channels, images have {like.shape[1]}')
    return t.view(1, -1, 1, 1)


def _logits(out):
    """The class logits of a model output (a tensor, or a tuple/dict/object that holds them first)."""
    if torch.is_tensor(out):
        return out
    if isinstance(out, (tuple, list)):
        return out[0]
    if isinstance(out, dict):
        return out['logits']
    return getattr(out, 'logits')


class PixelAttack:
    """Shared machinery: pixel/normalised conversions, the loss gradient, eps-ball projection."""

    def __init__(self, mean, std, eps: float, amp_dtype: Optional[torch.dtype] = None):
        if eps <= 0:
            raise ValueError('eps must be positive')
        self.mean, self.std, self.eps, self.amp_dtype = mean, std, float(eps), amp_dtype

    def _autocast(self, device: torch.device):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.amp_dtype)

    def grad_sign(self, model, pixels, targets, mean, std) -> torch.Tensor:
        x = pixels.detach().requires_grad_(True)
        with torch.enable_grad():
            with self._autocast(x.device):
                logits = _logits(model((x - mean) / std))
            loss = F.cross_entropy(logits.float(), targets, reduction='sum')
            (grad,) = torch.autograd.grad(loss, x)
        return grad.sign()

    def project(self, adv, clean):
        adv = torch.max(torch.min(adv, clean + self.eps), clean - self.eps)
        return adv.clamp_(0.0, 1.0)

    def __call__(self, model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        model.eval()
        images = images.float()
        mean, std = _stats(self.mean, images), _stats(self.std, images)
        clean = (images * std + mean).clamp_(0.0, 1.0)
        adv = self.perturb(model, clean, targets, mean, std)
        return ((adv - mean) / std).detach()

    def perturb(self, model, clean, targets, mean, std):
        raise NotImplementedError


class FGSM(PixelAttack):
    """One signed-gradient step of size eps (default 1/255)."""

    def __init__(self, mean, std, eps: float = FGSM_EPS, amp_dtype=None):
        super().__init__(mean, std, eps, amp_dtype)

    def perturb(self, model, clean, targets, mean, std):
        return self.project(clean + self.eps * self.grad_sign(model, clean, targets, mean, std), clean)

    def __repr__(self):
        return f'FGSM(eps={self.eps * 255:g}/255)'


class PGD(PixelAttack):
    """``steps`` signed-gradient steps of size ``step`` from a uniform random start in the eps-ball, each
    projected back onto the ball and [0, 1]. Defaults: eps 1/255, 5 steps of 0.5/255. ``seed`` makes the
    random start reproducible (a generator on the images' device)."""

    def __init__(self, mean, std, eps: float = PGD_EPS, step: float = PGD_STEP, steps: int = PGD_STEPS,
                 random_start: bool = True, seed: Optional[int] = 0, amp_dtype=None):
        super().__init__(mean, std, eps, amp_dtype)
        if steps < 1 or step <= 0:
            raise ValueError('PGD needs steps >= 1 and step > 0')
        self.step, self.steps, self.random_start, self.seed = float(step), int(steps), random_start, seed
        self._gen = None

    def _noise(self, like):
        if self.seed is None:
            return torch.empty_like(like).uniform_(-self.eps, self.eps)
        if self._gen is None or self._gen.device != like.device:
            self._gen = torch.Generator(device=like.device)
            self._gen.manual_seed(self.seed)
        u = torch.rand(like.shape, generator=self._gen, device=like.device, dtype=like.dtype)
        return (2 * u - 1) * self.eps

    def perturb(self, model, clean, targets, mean, std):
        adv = self.project(clean + self._noise(clean), clean) if self.random_start else clean.clone()
        for _ in range(self.steps):
            adv = self.project(adv + self.step * self.grad_sign(model, adv, targets, mean, std), clean)
        return adv

    def __repr__(self):
        return (f'PGD(eps={self.eps * 255:g}/255, step={self.step * 255:g}/255, steps={self.steps}, '
                f'random_start={self.random_start})')
