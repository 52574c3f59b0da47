"""The WebUI's prompt language, without torch: prompt editing, alternation, emphasis and AND.

Semantics follow AUTOMATIC1111 v1.10.1 (``modules/prompt_parser.py``):

- ``[from:to:when]``, ``[to:when]``, ``[from::when]`` switch text at a step; ``when`` with a
  decimal point is a fraction of the steps, without one it is a step number (1.10 rules, also
  for the hires pass); ``[a|b|c]`` alternates every step; ``(x)``/``[x]``/``(x:w)`` are kept
  verbatim in the schedule text and weighed later by :func:`parse_emphasis`.
- A prompt the WebUI grammar cannot parse (a ``|`` outside an alternation, a lone trailing
  backslash) is kept as-is as a single schedule; nothing here raises on odd input.

The WebUI parses schedules with a lark Earley grammar. This module is a hand-written recursive
descent parser that accepts the same language and, where the grammar is ambiguous (a bracket
that may be literal text or the start of an edit), prefers the bracket construct as lark does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# --- schedule tree -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Text:
    """Text kept verbatim: plain words, whitespace, emphasis brackets, stray brackets."""

    value: str


@dataclass(frozen=True)
class _Scheduled:
    """``[before:after:when]``; ``before`` is None for the ``[after:when]`` form."""

    before: tuple[_Node, ...] | None
    after: tuple[_Node, ...]
    number: str


@dataclass(frozen=True)
class _Alternate:
    options: tuple[tuple[_Node, ...], ...]


_Node = _Text | _Scheduled | _Alternate

# The grammar's NUMBER (lark common.SIGNED_NUMBER), alternatives in the same order so the
# regex engine picks the same match: INT exponent, then decimal with optional exponent, then INT.
_NUMBER = re.compile(r"[+-]?(?:\d+[eE][+-]?\d+|(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+)")
_WHITESPACE = re.compile(r"\s+")
# Characters that end a plain run; a backslash escapes any following character except newline.
_STRUCTURAL = frozenset("[]():|")


class _Unparsable(Exception):
    """The WebUI grammar rejects the whole prompt (it is then kept as a single schedule)."""


class _ScheduleParser:
    """Recursive descent over one prompt. ``None`` results mean "this construct does not match"."""

    def __init__(self, text: str):
        self.text = text

    def parse(self) -> tuple[_Node, ...]:
        text = self.text
        nodes: list[_Node] = []
        pos = 0
        while pos < len(text):
            char = text[pos]
            if char in "[(":
                construct = self._bracket(pos) if char == "[" else self._paren(pos)
                if construct is not None:
                    parsed, pos = construct
                    nodes.extend(parsed)
                    continue
                nodes.append(_Text(char))  # an unmatched bracket is literal text at top level
                pos += 1
            elif char in "]):":
                nodes.append(_Text(char))
                pos += 1
            elif char == "|":
                raise _Unparsable
            else:
                end = self._plain_end(pos)
                if end == pos:
                    raise _Unparsable
                nodes.append(_Text(text[pos:end]))
                pos = end
        return tuple(nodes)

    def _plain_end(self, pos: int) -> int:
        """End of the plain run at ``pos``; returns ``pos`` when a backslash cannot be lexed."""
        text = self.text
        while pos < len(text):
            char = text[pos]
            if char == "\\":
                if pos + 1 >= len(text) or text[pos + 1] == "\n":
                    return pos
                pos += 2
            elif char in _STRUCTURAL:
                return pos
            else:
                pos += 1
        return pos

    def _prompt(self, pos: int) -> tuple[tuple[_Node, ...], int] | None:
        """A nested prompt: text and constructs up to a ``] ) : |`` or the end."""
        text = self.text
        nodes: list[_Node] = []
        while pos < len(text):
            char = text[pos]
            if char in "]):|":
                break
            if char in "[(":
                construct = self._bracket(pos) if char == "[" else self._paren(pos)
                if construct is None:
                    return None
                parsed, pos = construct
                nodes.extend(parsed)
                continue
            end = self._plain_end(pos)
            if end == pos:
                return None
            nodes.append(_Text(text[pos:end]))
            pos = end
        return tuple(nodes), pos

    def _at(self, pos: int) -> str:
        return self.text[pos] if pos < len(self.text) else ""

    def _paren(self, pos: int) -> tuple[tuple[_Node, ...], int] | None:
        """``(prompt)`` or ``(prompt:prompt)``, kept verbatim."""
        first = self._prompt(pos + 1)
        if first is None:
            return None
        inner, pos = first
        if self._at(pos) == ")":
            return (_Text("("), *inner, _Text(")")), pos + 1
        if self._at(pos) != ":":
            return None
        second = self._prompt(pos + 1)
        if second is None:
            return None
        weight, end = second
        if self._at(end) != ")":
            return None
        return (_Text("("), *inner, _Text(":"), *weight, _Text(")")), end + 1

    def _bracket(self, pos: int) -> tuple[tuple[_Node, ...], int] | None:
        """``[prompt]`` (kept verbatim), an alternation or a scheduled edit."""
        first = self._prompt(pos + 1)
        if first is None:
            return None
        inner, pos = first
        char = self._at(pos)
        if char == "]":
            return (_Text("["), *inner, _Text("]")), pos + 1
        if char == "|":
            return self._alternate(inner, pos)
        if char != ":":
            return None
        when = self._when(pos + 1)
        if when is not None:
            number, end = when
            return (_Scheduled(None, inner, number),), end
        second = self._prompt(pos + 1)
        if second is None:
            return None
        after, pos = second
        if self._at(pos) != ":":
            return None
        when = self._when(pos + 1)
        if when is None:
            return None
        number, end = when
        return (_Scheduled(inner, after, number),), end

    def _alternate(self, first: tuple[_Node, ...], pos: int) -> tuple[tuple[_Node, ...], int] | None:
        options = [first]
        while self._at(pos) == "|":
            option = self._prompt(pos + 1)
            if option is None:
                return None
            nodes, pos = option
            options.append(nodes)
        if self._at(pos) != "]":
            return None
        return (_Alternate(tuple(options)),), pos + 1

    def _when(self, pos: int) -> tuple[str, int] | None:
        """``[WHITESPACE] NUMBER [WHITESPACE] "]"``; returns the number text and the end."""
        space = _WHITESPACE.match(self.text, pos)
        if space:
            pos = space.end()
        number = _NUMBER.match(self.text, pos)
        if number is None:
            return None
        pos = number.end()
        space = _WHITESPACE.match(self.text, pos)
        if space:
            pos = space.end()
        if self._at(pos) != "]":
            return None
        return number.group(0), pos + 1


# --- schedules -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StepRules:
    """How ``when`` numbers map to steps: the 1.10 rules, or "Old prompt editing timelines"."""

    steps: int
    int_offset: int = 0
    float_offset: float = 0.0
    old_scheduling: bool = False

    @classmethod
    def create(cls, steps: int, hires_steps: int | None, use_old_scheduling: bool) -> StepRules:
        if hires_steps is None or use_old_scheduling:
            return cls(steps=steps, old_scheduling=use_old_scheduling)
        # The hires pass continues the timeline: integers count on from the first pass, and
        # fractions above 1.0 land in the second pass.
        return cls(steps=hires_steps, int_offset=steps, float_offset=1.0)

    def end_step(self, number: str) -> int:
        value = float(number)
        if self.old_scheduling:
            value = value * self.steps if value < 1 else value
        elif "." in number:
            value = (value - self.float_offset) * self.steps
        else:
            value = value - self.int_offset
        # The WebUI takes min(steps, int(value)); clamping first keeps huge exponents ("1e999")
        # from overflowing without changing any step comparison.
        value = max(min(value, self.steps), -self.steps - 1)
        return min(self.steps, int(value))


def _collect_switch_steps(nodes: tuple[_Node, ...], rules: StepRules, found: set[int]) -> None:
    """Every step at which some part of the prompt may change, inactive branches included."""
    for node in nodes:
        if isinstance(node, _Scheduled):
            when = rules.end_step(node.number)
            if when >= 1:
                found.add(when)
            if node.before is not None:
                _collect_switch_steps(node.before, rules, found)
            _collect_switch_steps(node.after, rules, found)
        elif isinstance(node, _Alternate):
            found.update(range(1, rules.steps + 1))
            for option in node.options:
                _collect_switch_steps(option, rules, found)


def _render(nodes: tuple[_Node, ...], step: int, rules: StepRules, out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, _Text):
            out.append(node.value)
        elif isinstance(node, _Scheduled):
            if step <= rules.end_step(node.number):
                if node.before is not None:
                    _render(node.before, step, rules, out)
            else:
                _render(node.after, step, rules, out)
        else:
            _render(node.options[(step - 1) % len(node.options)], step, rules, out)


@dataclass(frozen=True)
class ScheduledPrompt:
    """The text to use up to and including sampling step ``end_at_step``."""

    end_at_step: int
    text: str


def schedule_prompt(prompt: str, rules: StepRules) -> list[ScheduledPrompt]:
    """One prompt's schedule as dataclasses (see :func:`prompt_schedules`)."""
    try:
        tree = _ScheduleParser(prompt).parse()
        switch_steps = {rules.steps}
        _collect_switch_steps(tree, rules, switch_steps)
        schedule = []
        for step in sorted(switch_steps):
            parts: list[str] = []
            _render(tree, step, rules, parts)
            schedule.append(ScheduledPrompt(step, "".join(parts)))
    except (_Unparsable, RecursionError):
        # RecursionError: brackets nested thousands deep; treated like any unparsable prompt.
        return [ScheduledPrompt(rules.steps, prompt)]
    return schedule


def prompt_schedules(
    prompts: list[str], steps: int, hires_steps: int | None = None, use_old_scheduling: bool = False
) -> list[list[list[int | str]]]:
    """The WebUI's ``get_learned_conditioning_prompt_schedules``: per prompt ``[[end_step, text], ...]``.

    >>> prompt_schedules(["a [b:c:0.5] d"], 20)
    [[[10, 'a b d'], [20, 'a c d']]]
    """
    rules = StepRules.create(steps, hires_steps, use_old_scheduling)
    cache: dict[str, list[ScheduledPrompt]] = {}
    result = []
    for prompt in prompts:
        if prompt not in cache:
            cache[prompt] = schedule_prompt(prompt, rules)
        result.append([[entry.end_at_step, entry.text] for entry in cache[prompt]])
    return result


# --- AND ----------------------------------------------------------------------------------

_AND = re.compile(r"\bAND\b")
# A trailing ":weight" on a sub-prompt; the text part is lazy so trailing spaces go to the tail.
_SUBPROMPT_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def parse_and(prompt: str) -> list[tuple[str, float]]:
    """Split a prompt on ``AND`` into ``(sub_prompt, weight)`` pairs (``cat AND dog:0.5``)."""
    parts = []
    for subprompt in _AND.split(prompt):
        match = _SUBPROMPT_WEIGHT.search(subprompt)
        if match is None:
            parts.append((subprompt, 1.0))
            continue
        text, weight = match.groups()
        parts.append((text, float(weight) if weight is not None else 1.0))
    return parts


def multicond_prompt_list(prompts: list[str]) -> tuple[list[list[tuple[int, float]]], list[str]]:
    """The WebUI's ``get_multicond_prompt_list``: per prompt ``(index, weight)`` pairs into one
    de-duplicated list of sub-prompts (each sub-prompt is scheduled and encoded once)."""
    flat: list[str] = []
    index_of: dict[str, int] = {}
    per_prompt = []
    for prompt in prompts:
        pairs = []
        for text, weight in parse_and(prompt):
            if text not in index_of:
                index_of[text] = len(flat)
                flat.append(text)
            pairs.append((index_of[text], weight))
        per_prompt.append(pairs)
    return per_prompt, flat


# --- emphasis ------------------------------------------------------------------------------

# Tokens of the emphasis language, tried in this order (the order decides e.g. "\(" vs "\").
_EMPHASIS_TOKEN = re.compile(
    r"""
    \\[()\[\]\\]            # escaped bracket or backslash: a literal character
    | \\                    # a lone backslash: dropped
    | [(\[]                 # opening brackets
    | :\s*([+-]?[.\d]+)\s*\)  # ":1.3)" closes a round bracket with an explicit weight
    | [)\]]                 # closing brackets
    | [^\\()\[\]:]+         # text
    | :                     # a colon that is not a weight
    """,
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_ROUND = 1.1
_SQUARE = 1 / 1.1


def _weight_value(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        # "(a:1.2.3)": the WebUI crashes here; Kiln keeps the text literal instead.
        return None


def parse_emphasis(text: str) -> list[list[str | float]]:
    """The WebUI's ``parse_prompt_attention``: ``[[text, weight], ...]`` with runs merged.

    ``(x)`` ×1.1, ``[x]`` ÷1.1, ``(x:1.5)`` ×1.5, nesting multiplies, unclosed brackets apply to
    the end, ``\\(`` etc. are literal, ``BREAK`` becomes ``["BREAK", -1]``.
    """
    result: list[list] = []
    round_starts: list[int] = []
    square_starts: list[int] = []

    def multiply_from(start: int, factor: float) -> None:
        for entry in result[start:]:
            entry[1] *= factor

    for match in _EMPHASIS_TOKEN.finditer(text):
        token = match.group(0)
        weight = _weight_value(match.group(1))
        if token.startswith("\\"):
            result.append([token[1:], 1.0])
        elif token == "(":
            round_starts.append(len(result))
        elif token == "[":
            square_starts.append(len(result))
        elif weight is not None and round_starts:
            multiply_from(round_starts.pop(), weight)
        elif token == ")" and round_starts:
            multiply_from(round_starts.pop(), _ROUND)
        elif token == "]" and square_starts:
            multiply_from(square_starts.pop(), _SQUARE)
        else:
            for index, part in enumerate(_BREAK.split(token)):
                if index > 0:
                    result.append(["BREAK", -1])
                result.append([part, 1.0])

    for start in round_starts:
        multiply_from(start, _ROUND)
    for start in square_starts:
        multiply_from(start, _SQUARE)

    if not result:
        result = [["", 1.0]]

    merged: list[list] = [result[0]]
    for entry in result[1:]:
        if merged[-1][1] == entry[1]:
            merged[-1][0] += entry[0]
        else:
            merged.append(entry)
    return merged


def uses_emphasis(text: str) -> bool:
    """True when some part of the text gets a weight other than 1 (BREAK aside)."""
    return any(weight != 1.0 and part != "BREAK" for part, weight in parse_emphasis(text))


__all__ = [
    "ScheduledPrompt",
    "StepRules",
    "multicond_prompt_list",
    "parse_and",
    "parse_emphasis",
    "prompt_schedules",
    "schedule_prompt",
    "uses_emphasis",
]
