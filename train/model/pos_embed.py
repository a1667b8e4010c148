"""Resizing SAM's position tables when the input size differs from the checkpoint's.

Same approach as SAMed (``load_from``): the absolute position embedding (1, G, G, C) is
interpolated bilinearly to the new grid, and the relative-position tables (2*G-1, head_dim) of
the global-attention blocks are interpolated linearly along their length. Windowed blocks keep
their (2*window-1)-long tables, whose shape does not change.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_abs_pos(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, H, W, C) -> (1, grid[0], grid[1], C), bilinear, align_corners=False."""
    if tuple(pos_embed.shape[1:3]) == tuple(grid):
        return pos_embed
    x = pos_embed.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=grid, mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).to(pos_embed.dtype).contiguous()


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """(L, C) -> (length, C), linear along L (align_corners=False), as SAM's get_rel_pos does."""
    if table.shape[0] == length:
        return table
    x = table.float().t().unsqueeze(0)                      # (1, C, L)
    x = F.interpolate(x, size=length, mode="linear", align_corners=False)
    return x[0].t().to(table.dtype).contiguous()


def is_pos_key(key: str) -> bool:
    return key.endswith("image_encoder.pos_embed") or key.endswith(("attn.rel_pos_h", "attn.rel_pos_w"))


def adapt_position_tables(state: dict[str, torch.Tensor],
                          target_shapes: dict[str, torch.Size]) -> list[str]:
    """Resize, in place, the position tables of `state` whose shapes differ from `target_shapes`.

    Only tables that can be resized are touched (pos_embed to a new square grid, rel_pos tables
    to a new length with the same head dim); returns the keys that were resized.
    """
    resized = []
    for key, value in list(state.items()):
        if key not in target_shapes or not is_pos_key(key):
            continue
        want = tuple(target_shapes[key])
        if tuple(value.shape) == want:
            continue
        if key.endswith("pos_embed"):
            if value.ndim == 4 and value.shape[0] == 1 and value.shape[3] == want[3]:
                state[key] = resize_abs_pos(value, (want[1], want[2]))
                resized.append(key)
        elif value.ndim == 2 and value.shape[1] == want[1]:
            state[key] = resize_rel_pos(value, want[0])
            resized.append(key)
    return resized
