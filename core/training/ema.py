"""Exponential moving average of a module's weights (the built-in recipe's, DreamBooth's ``use_ema``)."""

from __future__ import annotations

import torch


class Ema:
    """The average of every floating-point tensor of ``model.state_dict()``; integer buffers are copied.

    The decay warms up as min(decay, (1 + n)/(10 + n)) after n updates, so the average is not
    dominated by the weights at the start (a random initialisation, or a base model's).
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.steps = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                self.shadow[key].lerp_(value, 1 - decay)
            else:
                self.shadow[key].copy_(value)

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "steps": self.steps, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.shadow, self.steps = state["shadow"], int(state["steps"])
        self.decay = float(state.get("decay", self.decay))
