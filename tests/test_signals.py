"""Per-token signals against hand-computed values."""

import math

import pytest
import torch

from tje_hf.generation import signals
from tje_hf.generation.signals import (
    all_signals,
    deepconf_confidence,
    full_entropy,
    invalid_rows,
    self_certainty,
    token_logprob,
    topk_entropies,
    topk_entropy,
)

NEG_INF = float("-inf")


def test_uniform_over_k_gives_log2_k():
    logits = torch.zeros(3, 100)
    for k in (1, 5, 20):
        assert torch.allclose(topk_entropy(logits, k), torch.full((3,), math.log2(k)), atol=1e-6)


def test_one_hot_gives_zero():
    logits = torch.full((2, 50), -1e4)
    logits[:, 7] = 10.0
    assert torch.allclose(topk_entropy(logits, 20), torch.zeros(2), atol=1e-6)
    assert torch.allclose(full_entropy(logits), torch.zeros(2), atol=1e-6)


def test_two_point_distribution_by_hand():
    # top-2 renormalised: p = (e^1, e^0) / (e + 1) = (0.7310586, 0.2689414)
    # H = 0.7310586 * 0.4519626 + 0.2689414 * 1.8945498 = 0.8399415 bits
    logits = torch.tensor([[1.0, 0.0, -5.0, -6.0]])
    assert topk_entropy(logits, 2).item() == pytest.approx(0.8399415, abs=1e-6)


def test_renormalisation_makes_logprobs_and_logits_agree():
    torch.manual_seed(0)
    logits = torch.randn(4, 1000) * 3
    logprobs = torch.log_softmax(logits, -1)
    assert torch.allclose(topk_entropy(logits, 20), topk_entropy(logprobs, 20), atol=1e-5)


def test_several_k_from_one_call_equal_separate_calls():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 500) * 2
    many = topk_entropies(logits, (5, 10, 15, 20))
    assert many.shape == (2, 3, 4)
    for j, k in enumerate((5, 10, 15, 20)):
        assert torch.allclose(many[..., j], topk_entropy(logits, k), atol=1e-6)


def test_masked_entries_are_excluded_and_k_may_exceed_finite_count():
    logits = torch.full((1, 10), NEG_INF)
    logits[0, :3] = 0.0  # three finite, equal logits
    assert topk_entropy(logits, 20).item() == pytest.approx(math.log2(3), abs=1e-6)
    assert topk_entropy(logits, 2).item() == pytest.approx(1.0, abs=1e-6)
    assert full_entropy(logits).item() == pytest.approx(math.log2(3), abs=1e-6)
    # KL(U || p) over the finite support: p is uniform there -> 0
    assert self_certainty(logits).item() == pytest.approx(0.0, abs=1e-6)
    # DeepConf over the finite top-k: each log p = -ln 3 -> C = ln 3
    assert deepconf_confidence(logits, 20).item() == pytest.approx(math.log(3), abs=1e-6)


def test_nan_and_all_masked_rows_raise_or_flag():
    logits = torch.zeros(3, 8)
    logits[1] = NEG_INF
    logits[2, 4] = float("nan")
    with pytest.raises(ValueError, match="2 of 3 logit rows"):
        topk_entropy(logits, 4)
    assert invalid_rows(logits).tolist() == [False, True, True]
    out = all_signals(logits, (2, 4))
    assert out["topk_entropy"][0].tolist() == pytest.approx([1.0, 2.0])
    assert torch.isnan(out["topk_entropy"][1:]).all()
    assert torch.isnan(out["full_entropy"][1:]).all()
    assert not torch.isnan(topk_entropy(logits, 4, check=False)[0])


def test_low_precision_inputs_are_computed_in_float32():
    torch.manual_seed(2)
    logits = torch.randn(4, 300) * 4
    ref = topk_entropy(logits, 20)
    h16 = topk_entropy(logits.bfloat16(), 20)
    assert h16.dtype == torch.float32
    # bf16 rounding of the inputs only
    assert torch.allclose(h16, topk_entropy(logits.bfloat16().float(), 20), atol=1e-6)
    assert torch.allclose(h16, ref, atol=0.05)


def test_deepconf_self_certainty_logprob_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    lse = math.log(math.e**2 + math.e + 1)
    logp = [2 - lse, 1 - lse, 0 - lse]
    assert deepconf_confidence(logits, 2).item() == pytest.approx(-(logp[0] + logp[1]) / 2, abs=1e-6)
    assert self_certainty(logits).item() == pytest.approx(-math.log(3) - sum(logp) / 3, abs=1e-6)
    assert token_logprob(logits, torch.tensor([1])).item() == pytest.approx(logp[1], abs=1e-6)
    p = [math.exp(v) for v in logp]
    assert full_entropy(logits).item() == pytest.approx(-sum(q * math.log2(q) for q in p), abs=1e-6)


def test_all_signals_matches_the_single_functions():
    torch.manual_seed(3)
    logits = torch.randn(5, 2000) * 3
    out = all_signals(logits, (5, 20))
    assert torch.allclose(out["topk_entropy"], topk_entropies(logits, (5, 20)), atol=1e-6)
    assert torch.allclose(out["full_entropy"], full_entropy(logits), atol=1e-5)
    assert torch.allclose(out["deepconf_confidence"], deepconf_confidence(logits, 20), atol=1e-5)
    assert torch.allclose(out["self_certainty"], self_certainty(logits), atol=1e-4)


def test_directions_and_units_are_declared_for_every_signal():
    from tje_hf.columns import HIGHER_IS_UNCERTAIN, SIGNAL_NAMES

    assert set(signals.UNITS) == set(HIGHER_IS_UNCERTAIN) == set(SIGNAL_NAMES)
    assert signals.UNITS["topk_entropy"] == "bits" and HIGHER_IS_UNCERTAIN["topk_entropy"]
    assert not HIGHER_IS_UNCERTAIN["deepconf_confidence"]


def test_topk_only_mode_gives_the_same_topk_entropies_and_nan_elsewhere():
    torch.manual_seed(4)
    logits = torch.randn(3, 1000) * 3
    logits[2] = NEG_INF
    full = all_signals(logits, (5, 20))
    cheap = all_signals(logits, (5, 20), full_vocab=False)
    assert torch.allclose(cheap["topk_entropy"][:2], full["topk_entropy"][:2], atol=1e-6)
    assert torch.isnan(cheap["topk_entropy"][2]).all()
    for name in ("full_entropy", "deepconf_confidence", "self_certainty", "lse"):
        assert torch.isnan(cheap[name]).all()
