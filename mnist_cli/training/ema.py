"""An exponential moving average (EMA) of a model's weights, updated after every optimizer step.

The average is a second copy of the model: its parameters and floating-point buffers (batch-norm
running statistics) move towards the trained ones by (1 - decay) per step, in one foreach kernel;
integer buffers (batch counts) are copied. Early steps use a smaller decay, (1 + t) / (10 + t), so
the average does not drag the random initial weights along for thousands of steps.
"""

from __future__ import annotations

import copy
from typing import Dict

import torch
from torch import nn


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False)
        averaged, trained = self.model.state_dict(keep_vars=True), model.state_dict(keep_vars=True)
        floats = [k for k in averaged if averaged[k].is_floating_point()]
        self._averaged = [averaged[k].detach() for k in floats]
        self._trained = [trained[k].detach() for k in floats]  # views of the live weights
        self._copied = [(averaged[k], trained[k]) for k in averaged if k not in floats]

    @torch.no_grad()
    def update(self, steps_done: int) -> None:
        """Move the average towards the trained weights after optimizer step number `steps_done`
        (counted over the whole run, so a resumed run continues the same sequence of decays)."""
        decay = min(self.decay, (1 + steps_done) / (10 + steps_done))
        torch._foreach_lerp_(self._averaged, self._trained, 1 - decay)
        for average, value in self._copied:
            average.copy_(value)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
