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


def fx_traced(model: torch.nn.Module):
    """The model traced as timm's suite and feature extraction trace it (timm's leaf modules and functions);
    returns a callable giving the traced graph's output."""
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
    kw = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
              param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=kw)
    graph = create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                     tracer_kwargs=kw)
    return lambda *args, **kwargs: next(iter(graph(*args, **kwargs).values()))
