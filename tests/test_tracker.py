"""The tracker inside real ``generate`` calls, against an independent teacher-forced reference.

For each generated sequence, one forward pass over prompt + generated tokens (batch of one, no
padding, no cache) gives the model's logits at every generated position; the signals computed
from those must equal what the tracker recorded during batched, cached, sampled decoding with
built-in processors active.
"""

from __future__ import annotations

import pytest
import torch

from tje_hf import DecodeConfig, SignalConfig, generate_with_entropy
from tje_hf.config import WindowStopConfig
from tje_hf.generation.sampling import SeededSampler
from tje_hf.generation.signals import full_entropy, self_certainty, token_logprob, topk_entropies
from tje_hf.generation.tracker import EntropyTracker, TokenBudgetStop, WindowMeanStop

KS = (5, 10, 15, 20)
PROMPTS = [
    [{"role": "user", "content": "What is 3 + 4?"}],
    [{"role": "user", "content": "Name a colour of the sky at dusk and explain why in one sentence."}],
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Count from one to five, then say which number is largest and why."}],
]


def reference_signals(model, prompt_ids: list[int], gen_ids: list[int]) -> torch.Tensor:
    """``(n, S)`` signals from one teacher-forced forward pass (columns as the tracker's).

    The signals are computed in float64 from the float32 logits: a float32 sum over a 49k
    vocabulary alone is off by ~1e-4 bits, which would hide the comparison.
    """
    ids = torch.tensor([prompt_ids + gen_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()  # (L + n, V)
    at = logits[len(prompt_ids) - 1: len(prompt_ids) - 1 + len(gen_ids)]  # predicts each generated token
    lse = torch.logsumexp(at, -1)
    top = torch.topk(at, 20, -1).values
    deepconf = -(top - lse[:, None]).mean(-1)
    return torch.cat([
        topk_entropies(at, KS),
        full_entropy(at)[:, None],
        deepconf[:, None],
        self_certainty(at)[:, None],
        token_logprob(at, torch.tensor(gen_ids))[:, None],
    ], dim=-1).float()


def check_against_reference(model, tokenizer, prompts, config, *, atol_bits=1e-4):
    out = generate_with_entropy(model, tokenizer, prompts, config)
    prompt_ids = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True) for p in prompts]
    prompt_ids = [list(p["input_ids"]) if hasattr(p, "keys") else list(p) for p in prompt_ids]
    n_tokens = 0
    for res, pids in zip(out.results, prompt_ids, strict=True):
        assert res.prompt_tokens == len(pids)
        assert res.trace.shape == (res.n_generated, len(out.columns))
        ref = reference_signals(model, pids, res.token_ids)
        got = torch.from_numpy(res.trace)
        entropy_cols = [out.columns.index(f"topk_entropy@{k}") for k in KS] + [out.columns.index("full_entropy")]
        diff_bits = (got[:, entropy_cols] - ref[:, entropy_cols]).abs().max().item()
        assert diff_bits < atol_bits, f"top-k/full entropy differs by {diff_bits} bits"
        nat_cols = [out.columns.index(c) for c in ("deepconf_confidence", "self_certainty", "token_logprob")]
        assert torch.allclose(got[:, nat_cols], ref[:, nat_cols], atol=2e-4, rtol=1e-5)
        # the means are the means of the trace
        mean20 = got[:, out.columns.index("topk_entropy@20")].mean().item()
        assert res.means["all"]["topk_entropy@20"] == pytest.approx(mean20, abs=1e-5)
        assert res.counts["all"] == res.n_generated
        n_tokens += res.n_generated
    return out, n_tokens


SAMPLED = DecodeConfig(max_new_tokens=24, temperature=0.7, top_p=0.9, repetition_penalty=1.3, min_new_tokens=6,
                       seed=3, signals=SignalConfig(ks=KS, trace=True))


def test_smollm2_matches_teacher_forced_reference(smollm2):
    out, n = check_against_reference(smollm2.model, smollm2.tokenizer, PROMPTS, SAMPLED)
    assert n > 4 * 6  # min_new_tokens held, several tokens each
    # The repetition penalty changed the sampled distribution, but not what was recorded:
    assert len({r.n_generated for r in out.results}) >= 1


@pytest.mark.parametrize("name", ["tiny_gpt_oss", "tiny_qwen3_moe"])
def test_tiny_families_match_teacher_forced_reference(name, request, smollm2):
    model = request.getfixturevalue(name)
    # 40 new tokens after prompts of up to ~40 tokens: past the gpt-oss sliding window (16).
    config = DecodeConfig(max_new_tokens=40, temperature=0.7, top_p=0.9, repetition_penalty=1.3, min_new_tokens=30,
                          seed=5, signals=SignalConfig(ks=KS, trace=True))
    _, n = check_against_reference(model, smollm2.tokenizer, PROMPTS, config)
    assert n >= 4 * 30


def test_observer_is_first_even_with_builtin_processors(smollm2):
    """With suppress_tokens and bad_words_ids the observed logits stay the model's own."""
    model, tok = smollm2.model, smollm2.tokenizer
    gen_cfg_backup = model.generation_config.to_dict()
    try:
        model.generation_config.suppress_tokens = [tok.convert_tokens_to_ids("The"), 28]
        model.generation_config.bad_words_ids = [[tok.convert_tokens_to_ids("I")]]
        check_against_reference(model, tok, PROMPTS[:2], DecodeConfig(
            max_new_tokens=12, temperature=0.0, min_new_tokens=12, signals=SignalConfig(ks=KS, trace=True)))
    finally:
        model.generation_config.suppress_tokens = gen_cfg_backup.get("suppress_tokens")
        model.generation_config.bad_words_ids = gen_cfg_backup.get("bad_words_ids")


def test_tracker_never_changes_logits():
    tracker = EntropyTracker(2, 4, KS, [2], "cpu")
    scores = torch.randn(2, 100)
    before = scores.clone()
    out = tracker(torch.zeros(2, 3, dtype=torch.long), scores)
    assert out is scores and torch.equal(scores, before)


@pytest.mark.parametrize("n_alt", [5, 20, 21, 64])
def test_alternatives_wider_than_every_top_k(smollm2, n_alt):
    """``trace_alternatives`` up to the config's limit of 64, beyond every top-k the signals take:
    each token keeps its ``n_alt`` most likely ids, in order, with their full-vocabulary
    log-probabilities, and the signals are those of the default width."""
    config = DecodeConfig(max_new_tokens=6, temperature=0.0,
                          signals=SignalConfig(ks=KS, trace=True, trace_alternatives=n_alt))
    out = generate_with_entropy(smollm2.model, smollm2.tokenizer, PROMPTS[:2], config)
    narrow = generate_with_entropy(smollm2.model, smollm2.tokenizer, PROMPTS[:2], DecodeConfig(
        max_new_tokens=6, temperature=0.0, signals=SignalConfig(ks=KS, trace=True)))
    tok = smollm2.tokenizer
    for res, ref, prompt in zip(out.results, narrow.results, PROMPTS[:2], strict=True):
        assert res.alt_ids.shape == res.alt_logprobs.shape == (res.n_generated, n_alt)
        assert res.token_ids == ref.token_ids and (res.trace == ref.trace).all()
        pids = list(tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)["input_ids"])
        with torch.no_grad():
            logits = smollm2.model(input_ids=torch.tensor([pids + res.token_ids])).logits[0]
        at = torch.log_softmax(logits[len(pids) - 1: len(pids) - 1 + res.n_generated].double(), -1)
        top = torch.topk(at, n_alt, -1)
        assert (torch.from_numpy(res.alt_ids).long() == top.indices).float().mean() > 0.99  # near-ties may swap
        got = torch.from_numpy(res.alt_logprobs).double()
        assert torch.allclose(got, top.values, atol=2e-2, rtol=1e-3)  # stored as float16


def test_finished_rows_stop_contributing(smollm2):
    """Rows that hit EOS early are padded; their pad positions are not counted."""
    config = DecodeConfig(max_new_tokens=48, temperature=0.0, signals=SignalConfig(ks=KS, trace=True))
    prompts = [[{"role": "user", "content": "Say only: yes"}], PROMPTS[1]]
    out = generate_with_entropy(smollm2.model, smollm2.tokenizer, prompts, config)
    width = out.sequences.shape[1] - out.prompt_length
    short = min(out.results, key=lambda r: r.n_generated)
    assert short.stop_reason == "eos" and short.token_ids[-1] == 2
    assert short.n_generated < width  # padding followed it in the batch
    assert (out.sequences[out.results.index(short), out.prompt_length + short.n_generated:] == 2).all()
    for res in out.results:
        assert res.counts["all"] == res.n_generated == len(res.token_ids) == len(res.trace)
        assert (res.stop_reason == "max_new_tokens") == (res.n_generated == 48)
        assert (res.stop_reason == "eos") == (res.token_ids[-1] == 2)


def test_seeded_sampling_does_not_depend_on_batch_composition(smollm2):
    config = DecodeConfig(max_new_tokens=16, temperature=1.0, seed=11, signals=SignalConfig(ks=KS))
    alone = generate_with_entropy(smollm2.model, smollm2.tokenizer, [PROMPTS[1]], config, seeds=[123])
    batched = generate_with_entropy(smollm2.model, smollm2.tokenizer, [PROMPTS[3], PROMPTS[1]], config,
                                    seeds=[7, 123])
    assert alone.results[0].token_ids == batched.results[1].token_ids
    other = generate_with_entropy(smollm2.model, smollm2.tokenizer, [PROMPTS[1]], config, seeds=[124])
    assert other.results[0].token_ids != alone.results[0].token_ids


def test_window_stop_and_budget_stop_per_row(smollm2):
    # Threshold above log2(20): the window mean can never exceed it -> never fires.
    never = DecodeConfig(max_new_tokens=20, temperature=0.0, window_stop=WindowStopConfig(
        threshold=5.0, window=4, min_tokens=4), signals=SignalConfig(ks=KS))
    out = generate_with_entropy(smollm2.model, smollm2.tokenizer, PROMPTS[1:2], never)
    assert out.results[0].stop_reason in ("eos", "max_new_tokens")
    # Threshold -1 bits: any window mean exceeds it -> stops right at min_tokens.
    always = DecodeConfig(max_new_tokens=20, temperature=0.0, window_stop=WindowStopConfig(
        threshold=-1.0, window=4, min_tokens=6), signals=SignalConfig(ks=KS))
    out = generate_with_entropy(smollm2.model, smollm2.tokenizer, PROMPTS[1:2], always)
    assert out.results[0].stop_reason == "window_stop" and out.results[0].n_generated == 6
    budget = DecodeConfig(max_new_tokens=20, temperature=0.0, signals=SignalConfig(ks=KS))
    # budgets below each row's own end (PROMPTS[3] ends with EOS at its 9th greedy token)
    out = generate_with_entropy(smollm2.model, smollm2.tokenizer, [PROMPTS[1], PROMPTS[3]], budget,
                                token_budget=[5, 7])
    assert [r.n_generated for r in out.results] == [5, 7]
    assert [r.stop_reason for r in out.results] == ["token_budget", "token_budget"]


def test_no_host_sync_in_tracker_or_criteria(smollm2, monkeypatch):
    """Count device-to-host reads made while the tracker, a criterion or the sampler runs: there
    are none."""
    calls = {"n": 0, "inside": False}
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__"):
        original = getattr(torch.Tensor, name)

        def counting(self, *a, _orig=original, **kw):
            if calls["inside"]:
                calls["n"] += 1
            return _orig(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counting)

    def watched(fn):
        def wrapper(*a, **kw):
            calls["inside"] = True
            try:
                return fn(*a, **kw)
            finally:
                calls["inside"] = False
        return wrapper

    monkeypatch.setattr(EntropyTracker, "__call__", watched(EntropyTracker.__call__))
    monkeypatch.setattr(WindowMeanStop, "__call__", watched(WindowMeanStop.__call__))
    monkeypatch.setattr(TokenBudgetStop, "__call__", watched(TokenBudgetStop.__call__))
    monkeypatch.setattr(SeededSampler, "__call__", watched(SeededSampler.__call__))
    config = DecodeConfig(max_new_tokens=12, temperature=0.7, seed=1,
                          window_stop=WindowStopConfig(threshold=9.0, window=2, min_tokens=2),
                          token_budget=10, signals=SignalConfig(ks=KS, trace=True, trace_alternatives=5))
    out = generate_with_entropy(smollm2.model, smollm2.tokenizer, PROMPTS[:2], config)
    assert sum(r.n_generated for r in out.results) > 2
    assert calls["n"] == 0


def test_eos_check_never_sorts():
    """A model may name many end-of-turn ids. ``torch.isin`` sorts (``_unique``, a read back to the
    host on CUDA) once its second argument has more than about 10 x B^0.145 entries; the tracker's
    EOS check is a plain comparison whatever their number, and agrees with set membership."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    eos = list(range(0, 400, 10))  # 40 ids
    tracker = EntropyTracker(16, 4, KS, eos, "cpu")
    token = torch.arange(0, 160, 10) + torch.tensor([0, 1] * 8)  # every other row an EOS id
    with Ops() as ops:
        hit = tracker.is_eos(token)
    assert hit.tolist() == [int(t) in set(eos) for t in token]
    assert not any(name.split(".")[1] in ("isin", "sort", "_unique", "_unique2", "unique_dim") for name in ops.names)
