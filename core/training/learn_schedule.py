"""The WebUI's learning-rate schedule text for embeddings and hypernetworks.

``"0.005:100, 1e-3:1000, 1e-5"`` means 0.005 until step 100, 1e-3 until step 1000, then 1e-5 to
the end (A1111 ``modules/textual_inversion/learn_schedule.py``). Pairs ending at or before the
step a run starts from are dropped; ``rate:-1`` and a bare rate run to ``max_steps``; a pair
past ``max_steps`` is cut there and ends the list. The same text drives gradient clipping's
value when clipping is on.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import InvalidParameterError

_HELP = ('It should be a number or, for example, like "0.001:100, 0.00001:1000, 1e-5:10000" to have lr of '
         '0.001 until step 100, 0.00001 until 1000, and 1e-5 until 10000.')


def parse_schedule(text: str | float, max_steps: int, cur_step: int = 0) -> list[tuple[float, int]]:
    """[(rate, end step)] as ``LearnScheduleIterator`` builds it; raises ``InvalidParameterError``."""
    rates: list[tuple[float, int]] = []
    try:
        for pair in str(text).split(","):
            if not pair.strip():
                continue
            parts = pair.split(":")
            if len(parts) == 2:
                step = int(parts[1])
                if step > cur_step:
                    rates.append((float(parts[0]), min(step, max_steps)))
                    if step > max_steps:
                        break
                elif step == -1:
                    rates.append((float(parts[0]), max_steps))
                    break
            elif len(parts) == 1:
                rates.append((float(parts[0]), max_steps))
                break
            else:
                raise ValueError(pair)
    except ValueError as exc:
        raise InvalidParameterError("learn_rate", f"invalid learning rate schedule {text!r}", hint=_HELP) from exc
    if not rates:
        raise InvalidParameterError("learn_rate", f"the schedule {text!r} has no rate for steps after {cur_step}",
                                    hint=_HELP)
    return rates


@dataclass
class LearnRateScheduler:
    """Walks the schedule by step number, as the WebUI's ``LearnRateScheduler``: ``apply`` sets the
    optimizer's rate when a pair ends; ``finished`` once the last pair's end step is reached."""

    rates: list[tuple[float, int]]
    index: int = 0
    finished: bool = False

    @classmethod
    def from_text(cls, text: str | float, max_steps: int, cur_step: int = 0) -> LearnRateScheduler:
        return cls(parse_schedule(text, max_steps, cur_step))

    @property
    def learn_rate(self) -> float:
        return self.rates[self.index][0]

    @property
    def end_step(self) -> int:
        return self.rates[self.index][1]

    def step(self, step_number: int) -> bool:
        """True when the rate changed at ``step_number``."""
        if step_number < self.end_step:
            return False
        if self.index + 1 >= len(self.rates):
            self.finished = True
            return False
        self.index += 1
        return True

    def apply(self, optimizer, step_number: int) -> None:
        if self.step(step_number):
            for group in optimizer.param_groups:
                group["lr"] = self.learn_rate
