"""Reasoning / answer segmentation of generated tokens, on token ids, as a tiny state machine.

A family (``tje_hf/families.py``) describes where its reasoning ends and its answer begins as a
few transitions ``(state, token id) -> state``. The same machine runs inside the tracker during
decoding (vectorised over the batch, on the device, no host sync) and over a finished sequence
on the host, so the two always agree.

Each generated token gets one class: ``REASONING``, ``ANSWER`` or ``HEADER``. A token that fires
a transition (a channel marker, ``</think>``, an end-of-turn token) is ``HEADER``; any other token
takes the class of the current state. ``HEADER`` tokens count in the whole-step mean only.

Worked example, gpt-oss (harmony), state starts at HEADER::

    <|channel|> analysis <|message|> We need ... <|end|> <|start|> assistant <|channel|> final <|message|> 42 <|return|>
    H           H        H           R  R    R   H       H         H         H           H     H           A  H
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

REASONING, ANSWER, HEADER, HEADER_ANSWER = 0, 1, 2, 3
SEGMENT_NAMES = {REASONING: "reasoning", ANSWER: "answer"}


@dataclass(frozen=True)
class SegmentRules:
    """``initial`` state and transitions ``(from_state, token_id, to_state)``.

    States: ``REASONING``, ``ANSWER``, ``HEADER`` (inside a channel header; content after it is
    reasoning) and ``HEADER_ANSWER`` (a header that announced the answer channel).
    ``from_state = -1`` matches any state.
    """

    initial: int = ANSWER
    transitions: tuple[tuple[int, int, int], ...] = ()

    @property
    def has_reasoning(self) -> bool:
        return self.initial != ANSWER or any(to == REASONING for _, _, to in self.transitions)


GENERIC = SegmentRules()


class SegmentMachine:
    """The rules as device tensors; :meth:`step` classifies one token per row."""

    def __init__(self, rules: SegmentRules, device: torch.device | str):
        self.rules = rules
        trans = rules.transitions or ((-2, -2, ANSWER),)  # an entry that never matches
        self.from_state = torch.tensor([t[0] for t in trans], dtype=torch.long, device=device)
        self.token = torch.tensor([t[1] for t in trans], dtype=torch.long, device=device)
        self.to_state = torch.tensor([t[2] for t in trans], dtype=torch.long, device=device)

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.full((batch,), self.rules.initial, dtype=torch.long, device=self.token.device)

    def step(self, state: torch.Tensor, token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``state`` (B,) long, ``token`` (B,) long -> (class (B,) long, next state (B,) long)."""
        state_ok = (self.from_state[None, :] == state[:, None]) | (self.from_state[None, :] == -1)
        hit = state_ok & (self.token[None, :] == token[:, None])  # (B, R)
        fired = hit.any(-1)
        first = hit.float().argmax(-1)  # the first matching rule wins
        new_state = torch.where(fired, self.to_state[first], state)
        in_header = (state == HEADER) | (state == HEADER_ANSWER)
        cls = torch.where(fired | in_header, torch.full_like(state, HEADER), state)
        return cls, new_state


def segment_labels(rules: SegmentRules, token_ids: list[int]) -> list[int]:
    """The class of every token of one generated sequence (host-side, same machine as decoding)."""
    machine = SegmentMachine(rules, "cpu")
    state = machine.initial_state(1)
    labels = []
    for tok in token_ids:
        cls, state = machine.step(state, torch.tensor([tok]))
        labels.append(int(cls[0]))
    return labels
