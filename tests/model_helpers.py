"""Helpers the model tests share (the thread fixture is ``conftest.one_thread``)."""
import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to ``b``'s largest magnitude."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return torch.allclose(a, b, atol=tol, rtol=tol)


def amplify_feedback(model: torch.nn.Module, scale: float = 8.0) -> torch.nn.Module:
    """Scale the feedback path (decoders and stage bridges): at initialisation it barely moves the
    tokens, so the top-down pass would differ from the bottom-up one by too little to test."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.startswith(('decoders', 'up_projs')):
                p.mul_(scale)
    return model
