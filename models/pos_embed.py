"""Resampling a ViT's absolute position embedding to another patch grid, the two ways the zoo needs.

* ``release``: the reference release's segmentation backbone (and its checkpoint loading) resizes the grid
  with ``F.interpolate(mode='bicubic', align_corners=False)`` and no antialias;
* ``timm``: timm's ``resample_abs_pos_embed``, which antialiases when it shrinks the grid: what this
  project's ``--finetune`` (like timm's ``checkpoint_filter_fn``) has always done.

The two differ as soon as the grid shrinks, and the release's features are only reproduced the release's
way, hence a table of both rather than one resampler. Prefix tokens (class token...) are kept as they are.
"""
from typing import Callable, Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

__all__ = ['resample_pos_embed', 'timm_resample_pos_embed', 'RESAMPLERS']

Grid = Tuple[int, int]


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: Sequence[int], old_grid: Sequence[int],
                       num_prefix_tokens: int = 1) -> torch.Tensor:
    """The release's resampling: prefix tokens kept, the grid resized bicubic (align_corners=False, no
    antialias), computed in float32. Used at every forward of the segmentation backbone and when loading
    a checkpoint made at another size."""
    new_grid, old_grid = tuple(int(s) for s in new_grid), tuple(int(s) for s in old_grid)
    if new_grid == old_grid:
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    if grid.shape[1] != old_grid[0] * old_grid[1]:
        raise ValueError(f'a position embedding of {grid.shape[1]} patch tokens is not a {old_grid} grid')
    grid = grid.reshape(1, old_grid[0], old_grid[1], -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=new_grid, mode='bicubic', align_corners=False).to(pos_embed.dtype)
    return torch.cat([prefix, grid.flatten(2).transpose(1, 2)], dim=1)


def timm_resample_pos_embed(pos_embed: torch.Tensor, new_grid: Sequence[int], old_grid: Sequence[int],
                            num_prefix_tokens: int = 1) -> torch.Tensor:
    """timm's resampling (bicubic, antialiased), with the release resampler's signature."""
    return resample_abs_pos_embed(pos_embed, new_size=[int(s) for s in new_grid], old_size=[int(s) for s in old_grid],
                                  num_prefix_tokens=num_prefix_tokens)


#: how -> resampler ``(pos_embed, new_grid, old_grid, num_prefix_tokens) -> pos_embed``
RESAMPLERS: Dict[str, Callable[..., torch.Tensor]] = {
    'release': resample_pos_embed,
    'timm': timm_resample_pos_embed,
}
