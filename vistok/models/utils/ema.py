"""An exponential-moving-average copy of a model's parts, kept inside the
model (mmagic's ``generator_ema``; Polyak & Juditsky 1992) so it is
checkpointed, resumed and exported with it."""
import copy
from contextlib import contextmanager
from typing import Dict, Iterator

import torch
import torch.nn as nn


class ModelEMA(nn.ModuleDict):
    """EMA weights of named parts: ``θ_ema ← decay · θ_ema + (1 - decay) · θ``
    for parameters; buffers (e.g. a quantizer's EMA codebook, BatchNorm
    statistics) are copied.

    The copy's state-dict keys mirror the model's (``ema.encoder.conv_in.
    weight`` next to ``encoder.conv_in.weight``). The first update after
    construction — or after loading weights without an EMA — copies the
    parts, so the average starts from the trained initialisation.

    Args:
        parts: name → module of the owner whose weights are averaged.
        decay: EMA decay per update.
        interval: update every ``interval`` iterations.
        start_iter: before this iteration the copy just follows the model.
    """

    def __init__(self,
                 parts: Dict[str, nn.Module],
                 decay: float = 0.999,
                 interval: int = 1,
                 start_iter: int = 0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f'ema decay must be in [0, 1), got {decay}')
        if interval < 1:
            raise ValueError(f'ema interval must be >= 1, got {interval}')
        super().__init__(
            {name: copy.deepcopy(part) for name, part in parts.items()})
        self.requires_grad_(False)
        self.decay = decay
        self.interval = interval
        self.start_iter = start_iter
        # number of updates applied; 0 means "copy at the next update"
        self.register_buffer('num_updates', torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update_parameters(self, parts: Dict[str, nn.Module],
                          iteration: int) -> None:
        """Average ``parts`` (the live modules) into the copy after the
        optimizer step of ``iteration``."""
        if iteration % self.interval and iteration >= self.start_iter:
            return
        copy_only = (iteration < self.start_iter
                     or int(self.num_updates) == 0)
        for name, part in parts.items():
            ema = self[name]
            for p_ema, p in zip(ema.parameters(), part.parameters()):
                if copy_only:
                    p_ema.copy_(p)
                else:
                    p_ema.lerp_(p.detach().to(p_ema.dtype), 1.0 - self.decay)
            for b_ema, b in zip(ema.buffers(), part.buffers()):
                b_ema.copy_(b)
        self.num_updates += 1

    def restart(self) -> None:
        """Make the next update copy the parts (e.g. after loading
        pretrained weights into them)."""
        self.num_updates.zero_()

    @contextmanager
    def swapped_into(self, owner: nn.Module) -> Iterator[None]:
        """Within the block, ``owner``'s parts are the EMA copies (no weight
        copying: the submodules are exchanged and put back)."""
        live = {name: owner._modules[name] for name in self}
        try:
            for name in self:
                owner._modules[name] = self[name]
            yield
        finally:
            owner._modules.update(live)

    def extra_repr(self) -> str:
        return (f'decay={self.decay}, interval={self.interval}, '
                f'start_iter={self.start_iter}')
