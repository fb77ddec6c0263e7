"""An exponential moving average of the model's weights: what is evaluated and saved.

Averaging the weights over the last few hundred steps smooths out the noise of small-batch
training on small sets, so the model kept is less a matter of which epoch happened to end well.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """shadow = decay * shadow + (1 - decay) * weights, after every optimiser step.

    The decay ramps up from 0 ((1 + step) / (10 + step)), so early averages follow the model
    closely. BatchNorm running statistics are averaged the same way.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for s, m in zip(self.shadow.state_dict().values(), model.state_dict().values()):
            if s.dtype.is_floating_point:
                s.lerp_(m.detach(), 1 - d)
            else:
                s.copy_(m)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shadow.load_state_dict(state)
