"""The layout of code variables shared by every head that reads codes.

Variables are the quantizer's indices flattened as ``(h, w, codebook)`` with the codebook
fastest, so variable ``i`` uses codebook ``i % num_codebooks``. Heads embed all codebooks in
one table; adding a variable's offset to its code gives its row there.
"""

from __future__ import annotations

import torch


def codebook_offsets(num_variables: int, num_codebooks: int, codebook_size: int) -> torch.Tensor:
    """Row offset of each variable's codebook in a joint (codebooks * size) embedding table."""
    if num_variables % num_codebooks:
        raise ValueError(
            f"num_variables ({num_variables}) must be a multiple of num_codebooks ({num_codebooks})"
        )
    return (torch.arange(num_variables) % num_codebooks) * codebook_size
