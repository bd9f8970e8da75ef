"""Streaming signal tracker and stopping criteria that run inside ``model.generate``.

:class:`EntropyTracker` is a ``LogitsProcessor`` that observes the model's **raw** next-token
logits at every decoding step and never changes them. ``generate_with_entropy`` places it first
in the processor chain, before the built-ins that Transformers would otherwise run before any
custom processor (repetition penalty, min_new_tokens, suppress_tokens, bad_words_ids), and before
temperature / top-k / top-p; so what it records equals the model's own output for that position.

All state lives on the logits' device, and nothing in ``__call__`` or in the criteria reads a
value back to the host, so tracking adds no synchronisation point to the decoding loop.

The signal of the token generated at step t is computed at step t, but it can only be committed
(its segment known, its log-probability taken, the row's EOS seen) once the token is known: at
step t+1, or in :meth:`EntropyTracker.finalize` for the last one.
"""

from __future__ import annotations

import time

import torch
from transformers import LogitsProcessor, StoppingCriteria

from ..columns import SEGMENTS, higher_is_uncertain, signal_columns
from ..models.segments import ANSWER, GENERIC, HEADER_ANSWER, REASONING, SegmentMachine, SegmentRules
from .signals import DEEPCONF_K, all_signals

STOP_RUNNING, STOP_EOS, STOP_MAX_NEW_TOKENS, STOP_WINDOW, STOP_BUDGET, STOP_CONTEXT = 0, 1, 2, 3, 4, 5
STOP_REASONS = {
    STOP_RUNNING: "running",
    STOP_EOS: "eos",
    STOP_MAX_NEW_TOKENS: "max_new_tokens",
    STOP_WINDOW: "window_stop",
    STOP_BUDGET: "token_budget",
    STOP_CONTEXT: "context_full",  # the row's prompt plus its tokens filled the model's context
}


class EntropyTracker(LogitsProcessor):
    """Records every signal of every generated token, per row, on the device.

    Args:
        batch_size: rows B of the ``generate`` call.
        max_new_tokens: T, the trace length to preallocate.
        ks: top-k sizes of the top-k entropy columns.
        eos_token_ids: ids that end a row; after one, the row stops contributing.
        device: where the state lives (the logits' device).
        segment_rules: the family's reasoning/answer boundary (default: everything is answer).
        trace: keep per-token values ``(B, T, S)`` float32 and segment labels ``(B, T)`` int8.
        trace_alternatives: with ``trace``, also keep the top-n ids ``(B, T, n)`` int32 and
            their full-vocabulary log-probabilities ``(B, T, n)`` float16.
        copy_logits: copy each step's logits for the token's log-probability (taken one step
            later). False only when no later processor writes into the logits in place.

    State after :meth:`finalize`: ``sums`` ``(B, 3, S)`` float32 and ``counts`` ``(B, 3)`` over
    the segments ``("all", "reasoning", "answer")``; ``n_generated`` ``(B,)``; ``stop_code``
    ``(B,)``; ``n_invalid`` ``(B,)`` (steps whose logits had a NaN or no finite entry).
    """

    def __init__(
        self,
        batch_size: int,
        max_new_tokens: int,
        ks: tuple[int, ...],
        eos_token_ids: list[int] | tuple[int, ...],
        device: torch.device | str,
        segment_rules: SegmentRules = GENERIC,
        trace: bool = False,
        trace_alternatives: int = 0,
        deepconf_k: int = DEEPCONF_K,
        full_vocab: bool = True,
        copy_logits: bool = True,
    ):
        B, T = batch_size, max_new_tokens
        self.ks = tuple(ks)
        self.columns = signal_columns(self.ks)
        S = len(self.columns)
        self.deepconf_k = deepconf_k
        self.full_vocab = full_vocab
        self.copy_logits = copy_logits
        self.device = torch.device(device)
        self.eos = torch.tensor(sorted(set(eos_token_ids)) or [-1], dtype=torch.long, device=self.device)
        self.machine = SegmentMachine(segment_rules, self.device)
        self.seg_state = self.machine.initial_state(B)
        f32 = {"dtype": torch.float32, "device": self.device}
        self.sums = torch.zeros(B, len(SEGMENTS), S, **f32)
        self.counts = torch.zeros(B, len(SEGMENTS), **f32)
        self.n_generated = torch.zeros(B, dtype=torch.long, device=self.device)
        self.n_invalid = torch.zeros(B, dtype=torch.long, device=self.device)
        self.alive = torch.ones(B, dtype=torch.bool, device=self.device)
        self.stopped = torch.zeros(B, dtype=torch.bool, device=self.device)
        self.stop_code = torch.zeros(B, dtype=torch.long, device=self.device)
        self.trace = torch.full((B, T, S), float("nan"), **f32) if trace else None
        self.trace_segments = torch.full((B, T), -1, dtype=torch.int8, device=self.device) if trace else None
        n_alt = trace_alternatives if trace else 0
        self.alt_ids = torch.zeros(B, T, n_alt, dtype=torch.int32, device=self.device) if n_alt else None
        self.alt_logprobs = torch.zeros(B, T, n_alt, dtype=torch.float16, device=self.device) if n_alt else None
        self.n_alt = n_alt
        # (class, segment) -> weight: every token counts in "all", a REASONING token also in
        # "reasoning", an ANSWER token also in "answer"; HEADER tokens in "all" only.
        weights = torch.zeros(HEADER_ANSWER + 1, len(SEGMENTS), **f32)
        weights[:, 0] = 1.0
        weights[REASONING, 1] = weights[ANSWER, 2] = 1.0
        self._segment_weights = weights  # (4, 3)
        self._t0 = self._t1 = None  # prefill clock (start_clock, first step): events on CUDA, else seconds
        self.calls = 0  # host-side step counter: no device read needed
        self._pending: torch.Tensor | None = None  # (B, S-1) signals of the token just sampled
        self._pending_logits: torch.Tensor | None = None  # (B, V) float32 raw logits of that step
        self._pending_lse: torch.Tensor | None = None  # (B,)
        self._pending_alive: torch.Tensor | None = None  # (B,) rows that generated that token
        self._pending_counted: torch.Tensor | None = None  # (B,) ... and whose logits were valid

    # -- LogitsProcessor -----------------------------------------------------------------------

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Observe ``scores`` ``(B, V)`` (raw logits when placed first); return them unchanged."""
        # This call makes about 90 tensor ops a step (every signal, the trace, 5 alternatives), each
        # a dispatch on a CPU or a kernel launch on a GPU that adds to the step: add none without need.
        step = self.calls
        self.calls += 1
        if step == 0:
            self._mark_first_step()
        else:
            self._commit(input_ids[:, -1], step - 1)
        sig = all_signals(scores, self.ks, self.deepconf_k, self.full_vocab, width=self.n_alt)
        self._pending = torch.cat(
            [sig["topk_entropy"], sig["full_entropy"][:, None], sig["deepconf_confidence"][:, None],
             sig["self_certainty"][:, None]], dim=-1)
        # Kept until the token is known (its log-probability needs the full vocabulary). A later
        # processor may legally work in place on the tensor it is handed: copy, unless the caller
        # knows none will (generate_batch's own chain: every warper there returns a new tensor).
        if not self.full_vocab:
            self._pending_logits = None
        elif self.copy_logits or scores.dtype != torch.float32:
            self._pending_logits = scores.detach().to(torch.float32, copy=True)
        else:
            self._pending_logits = scores.detach()
        self._pending_lse = sig["lse"]
        self._pending_alive = self.alive  # safe without a copy: ``alive`` is replaced, never mutated
        self._pending_counted = self.alive & ~torch.isnan(self._pending[:, 0])
        self.n_generated += self.alive
        self.n_invalid += self.alive ^ self._pending_counted  # alive but invalid
        if self.n_alt and step < self.alt_ids.shape[1]:
            n = self.n_alt
            self.alt_ids[:, step] = sig["top_ids"][:, :n].to(torch.int32)
            self.alt_logprobs[:, step] = (sig["top_values"][:, :n] - sig["lse"][:, None]).to(torch.float16)
        return scores

    # -- timing ------------------------------------------------------------------------------

    def start_clock(self) -> None:
        """Mark the start of ``generate``; the first observed step marks the end of the prefill."""
        if self.device.type == "cuda":
            self._t0 = torch.cuda.Event(enable_timing=True)
            # on the model's device's stream: an event recorded with no stream goes to the
            # current device's, which is another GPU when the model is not on the current device
            self._t0.record(torch.cuda.current_stream(self.device))
        else:
            self._t0 = time.perf_counter()
        self._t1 = None

    def _mark_first_step(self) -> None:
        if self._t0 is None:
            return
        if self.device.type == "cuda":  # an event, not a sync: read after decoding ends
            self._t1 = torch.cuda.Event(enable_timing=True)
            self._t1.record(torch.cuda.current_stream(self.device))
        else:
            self._t1 = time.perf_counter()

    def prefill_seconds(self) -> float:
        """Seconds from :meth:`start_clock` to the first step's logits (prefill + first forward)."""
        if self._t1 is None:
            return float("nan")
        if self.device.type == "cuda":
            return self._t0.elapsed_time(self._t1) / 1000.0
        return self._t1 - self._t0

    # -- state updates -------------------------------------------------------------------------

    def _token_logprob(self, token: torch.Tensor) -> torch.Tensor:
        if self._pending_logits is None:  # full_vocab=False: not computed
            return torch.full_like(self._pending[:, 0], float("nan"))
        return self._pending_logits.gather(1, token[:, None]).squeeze(1) - self._pending_lse

    def pending_value(self, column: int, token: torch.Tensor) -> torch.Tensor:
        """``(B,)`` value of ``column`` for the token just sampled (``token`` ``(B,)``)."""
        if self.columns[column] == "token_logprob":
            return self._token_logprob(token)
        return self._pending[:, column]

    def is_eos(self, token: torch.Tensor) -> torch.Tensor:
        """``(B,)`` bool: the token ends its row. A comparison with every EOS id, not ``torch.isin``,
        which sorts (and reads the device back) once the EOS set is large."""
        return (token[:, None] == self.eos[None, :]).any(-1)

    def mark_stopped(self, rows: torch.Tensor, code: int) -> None:
        """Rows ``(B,)`` bool stopped by a criterion after the token just sampled."""
        self.stopped |= rows
        self.stop_code.masked_fill_(rows & (self.stop_code == STOP_RUNNING), code)

    def _commit(self, token: torch.Tensor, index: int) -> None:
        """Account the pending step, whose sampled token ``(B,)`` is now known."""
        logprob = self._token_logprob(token)
        values = torch.cat([self._pending, logprob[:, None]], dim=-1)  # (B, S)
        cls, self.seg_state = self.machine.step(self.seg_state, token)
        counted = self._pending_counted
        weights = self._segment_weights[cls] * counted[:, None]  # (B, 3)
        # where, not a product: a NaN in a row that does not count must not reach the sums
        safe = torch.where(counted[:, None], values, 0.0)
        self.sums.baddbmm_(weights[:, :, None], safe[:, None, :])  # sums[b, g, s] += w[b, g] * v[b, s]
        self.counts += weights
        if self.trace is not None and index < self.trace.shape[1]:
            alive = self._pending_alive
            self.trace[:, index] = torch.where(alive[:, None], values, float("nan"))
            self.trace_segments[:, index] = torch.where(alive, cls, -1).to(torch.int8)
        eos_hit = self._pending_alive & self.is_eos(token)
        self.stop_code.masked_fill_(eos_hit & (self.stop_code == STOP_RUNNING), STOP_EOS)
        self.alive = self._pending_alive & ~(eos_hit | self.stopped)

    def finalize(self, sequences: torch.Tensor, prompt_length: int) -> None:
        """Commit the last step, given the ``(B, prompt_length + n)`` output of ``generate``."""
        n_cols = sequences.shape[1] - prompt_length
        if self._pending is not None and self.calls == n_cols:
            self._commit(sequences[:, -1], n_cols - 1)
        # Otherwise generate ran one step more than it returned (deferred stop check): drop it.
        self._pending = self._pending_logits = None
        self.stop_code.masked_fill_(self.stop_code == STOP_RUNNING, STOP_MAX_NEW_TOKENS)


class WindowMeanStop(StoppingCriteria):
    """Stops a row when the mean of a signal over its last ``window`` tokens crosses ``threshold``.

    Reads the tracker's device state; returns a ``(B,)`` bool tensor; never reads to the host.
    The direction follows the column (:func:`tje_hf.columns.higher_is_uncertain`): an uncertainty
    stops the row when its window mean rises above ``threshold``, a confidence when it falls below.
    Fires only after ``min_tokens`` generated tokens, and not on a token that ends the row anyway.
    """

    def __init__(self, tracker: EntropyTracker, column: str, threshold: float, window: int,
                 min_tokens: int):
        if column not in tracker.columns:
            raise ValueError(f"window stop: unknown signal column {column!r}; have {tracker.columns}")
        if window < 1 or min_tokens < window:
            raise ValueError(f"window stop: need 1 <= window <= min_tokens, got window={window}, "
                             f"min_tokens={min_tokens}")
        self.tracker = tracker
        self.column = tracker.columns.index(column)
        self.threshold = float(threshold)
        self.window = window
        self.min_tokens = min_tokens
        self.above = higher_is_uncertain(column)
        B = tracker.n_generated.shape[0]
        self.ring = torch.zeros(B, window, dtype=torch.float32, device=tracker.device)
        self.ring_sum = torch.zeros(B, dtype=torch.float32, device=tracker.device)
        self.pos = 0

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        token = input_ids[:, -1]
        value = torch.nan_to_num(self.tracker.pending_value(self.column, token), nan=0.0)
        slot = self.pos % self.window
        self.ring_sum += value - self.ring[:, slot]
        self.ring[:, slot] = value
        self.pos += 1
        mean = self.ring_sum / min(self.pos, self.window)
        crossed = mean > self.threshold if self.above else mean < self.threshold
        t = self.tracker
        fire = t._pending_alive & (t.n_generated >= self.min_tokens) & crossed & ~t.is_eos(token)
        t.mark_stopped(fire, STOP_WINDOW)
        return fire


class TokenBudgetStop(StoppingCriteria):
    """Stops each row once it has generated ``budget[row]`` tokens (``budget`` ``(B,)`` or an int).
    ``code`` is the stop reason it records (:data:`STOP_BUDGET`; :data:`STOP_CONTEXT` where the
    budget is the room a row's prompt leaves in the model's context)."""

    def __init__(self, tracker: EntropyTracker, budget: torch.Tensor | int, code: int = STOP_BUDGET):
        self.tracker = tracker
        self.code = code
        B = tracker.n_generated.shape[0]
        self.budget = torch.as_tensor(budget, dtype=torch.long, device=tracker.device).expand(B).clone()
        if bool((self.budget < 1).any()):
            raise ValueError(f"token budget must be >= 1 for every row, got {self.budget.tolist()}")

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        t = self.tracker
        fire = t._pending_alive & (t.n_generated >= self.budget) & ~t.is_eos(input_ids[:, -1])
        t.mark_stopped(fire, self.code)
        return fire


class ProgressReport(StoppingCriteria):
    """Reports the tokens generated so far in a call, at a low rate; never stops a row.

    At most once per ``interval`` seconds of wall time (``time.monotonic``, checked on the host at
    every step at no device cost), it reads ``tracker.n_generated.sum()`` back to the host (one
    sync) and calls ``callback(tokens)``. So a step costs no host read unless the interval has
    passed: at most ``1 / interval`` reads per second, whatever the decoding speed. ``reads``
    counts them.
    """

    def __init__(self, tracker: EntropyTracker, callback, interval: float = 1.0):
        if interval <= 0:
            raise ValueError(f"progress interval must be > 0 seconds, got {interval}")
        self.tracker = tracker
        self.callback = callback
        self.interval = float(interval)
        self.next_report = time.monotonic() + self.interval
        self.reads = 0
        B = tracker.n_generated.shape[0]
        self._never = torch.zeros(B, dtype=torch.bool, device=tracker.device)

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        now = time.monotonic()
        if now >= self.next_report:
            self.reads += 1
            self.callback(int(self.tracker.n_generated.sum()))
            self.next_report = time.monotonic() + self.interval
        return self._never
