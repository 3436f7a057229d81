from dataclasses import dataclass, field
from typing import Dict, Optional

import torch


@dataclass
class QuantizerOutput:
    """What every quantizer's ``forward(z)`` returns (DESIGN §6).

    Attributes:
        quantized: straight-through output ``q + (z - z.detach())`` with the
            layout of the input ``(B, C, *spatial)``; its value is
            bit-identical to ``decode(indices)``.
        indices: integer codes, ``(B, *spatial)`` (or ``(B, *spatial, D)``
            for quantizers with several indices per position).
        loss: named, already-weighted loss terms (may be empty).
        stats: material for usage / perplexity logging (detached).
    """
    quantized: torch.Tensor
    indices: torch.Tensor
    loss: Dict[str, torch.Tensor] = field(default_factory=dict)
    stats: Dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class TokenizerOutput:
    """What a tokenizer's ``forward(..., mode='tensor')`` returns."""
    reconstruction: torch.Tensor
    quantizer: QuantizerOutput
    latent: Optional[torch.Tensor] = None
