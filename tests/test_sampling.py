"""The seeded sampler: exact draws from the processed distribution, a noise that is a function
of (row seed, step) only, batch invariance bit for bit on every CPU kernel path, and no run
resumed with another sampler."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from small_runs import error_lines, small_config
from transformers import TemperatureLogitsWarper, TopPLogitsWarper

from tje_hf.cli import main
from tje_hf.config import DecodeConfig
from tje_hf.generation.sampling import SAMPLER, SeededSampler, draw, row_uniforms


def test_the_config_names_the_sampler_this_code_implements():
    assert DecodeConfig().sampler == SAMPLER == "inverse-cdf"


def test_uniforms_depend_on_seed_and_step_only():
    seeds = torch.tensor([0, 1, 2, 3, 2**31 - 1, 2**32 - 1], dtype=torch.long)
    u0, u1 = row_uniforms(seeds, 0), row_uniforms(seeds, 1)
    assert u0.dtype == torch.float64 and ((u0 > 0) & (u0 < 1)).all()
    assert len(set(u0.tolist()) | set(u1.tolist())) == 12  # every (seed, step) its own number
    # a row's number does not depend on the others: alone, reordered, in a longer batch
    for i in range(len(seeds)):
        assert row_uniforms(seeds[i:i + 1], 7).item() == row_uniforms(seeds, 7)[i].item()
    assert torch.equal(row_uniforms(seeds.flip(0), 3), row_uniforms(seeds, 3).flip(0))
    # 53 bits: no two of 100,000 seeds share one
    many = row_uniforms(torch.arange(100_000), 5)
    assert len(torch.unique(many)) == 100_000
    assert abs(many.mean().item() - 0.5) < 0.005


@pytest.mark.parametrize("warpers", ["temperature", "temperature+top_p"])
def test_draws_follow_the_processed_distribution(warpers):
    """20,000 seeds, one row each, over a small vocabulary with a masked token: the counts match
    the softmax of the processed scores (chi-square), and the masked token is never drawn."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, float("-inf"), 1.5, -3.0]])
    processors = [TemperatureLogitsWarper(0.7)] + ([TopPLogitsWarper(0.9)] if "top_p" in warpers else [])
    n = 20_000
    scores = logits.expand(n, -1).clone()
    for proc in processors:
        scores = proc(None, scores)
    expected = torch.softmax(scores[0].double(), -1).numpy()
    tokens = SeededSampler(torch.arange(n))(None, scores.clone()).argmax(-1).numpy()
    counts = np.bincount(tokens, minlength=logits.shape[1])
    support = expected > 0
    assert counts[~support].sum() == 0  # masked, or cut by top-p: never drawn
    stat = chisquare(counts[support], n * expected[support])
    assert stat.pvalue > 1e-3, (counts, n * expected)
    # the next step draws afresh (a new uniform per row), from the same distribution
    sampler = SeededSampler(torch.arange(n))
    first = sampler(None, scores.clone()).argmax(-1)
    second = sampler(None, scores.clone()).argmax(-1)
    assert (first != second).float().mean() > 0.3


def test_draw_is_the_inverse_of_the_cumulative_weights():
    """One row, uniforms rising from 0 to 1: the drawn tokens rise with them, each drawn token has
    the weight its interval says, and the sampler marks exactly the drawn token with +inf."""
    row = torch.randn(1, 1000) * 3
    us = torch.linspace(1e-6, 1 - 1e-6, 257, dtype=torch.float64)
    tokens = draw(row.expand(len(us), -1), us)[:, 0]
    assert torch.all(tokens[1:] >= tokens[:-1])
    c = torch.cumsum(torch.exp(row[0] - row[0].max()).double(), 0)
    for u, t in zip(us.tolist(), tokens.tolist(), strict=True):
        assert (c[t - 1] if t else 0.0) <= u * c[-1] < c[t]
    out = SeededSampler(torch.arange(4))(None, row.expand(4, -1).clone())
    assert out.isinf().sum().item() == 4 and (out.isinf().int().argmax(-1) == out.argmax(-1)).all()


_ALONE_VS_BATCHED = r"""
import json, torch
from tje_hf.generation.sampling import SeededSampler
torch.manual_seed(0)
V = {vocab}
logits = torch.randn(9, V, dtype=torch.float32) * 4 / 0.7
seeds = torch.arange(100, 109)
out = {{}}
for step in range(4):
    batch = SeededSampler(seeds)
    batch.step = step
    together = batch(None, logits.clone()).argmax(-1).tolist()
    alone = []
    for row in range(9):
        one = SeededSampler(seeds[row:row + 1])
        one.step = step
        alone.append(one(None, logits[row:row + 1].clone()).argmax(-1).item())
    order = [8, 3, 0, 5]
    sub = SeededSampler(seeds[order])
    sub.step = step
    subset = sub(None, logits[order].clone()).argmax(-1).tolist()
    out[step] = {{"together": together, "alone": alone, "subset": subset, "order": order}}
print(json.dumps(out))
"""


@pytest.mark.parametrize("capability", ["default", "avx2", None])
def test_a_row_alone_draws_what_it_draws_in_any_batch(capability):
    """At gpt-oss's vocabulary (201,088), under each CPU kernel path: every row drawn alone, in a
    batch of nine and in a reordered subset gets the same token, bit for bit."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    env.pop("ATEN_CPU_CAPABILITY", None)
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    proc = subprocess.run([sys.executable, "-c", _ALONE_VS_BATCHED.format(vocab=201_088)], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for step in json.loads(proc.stdout).values():
        assert step["alone"] == step["together"]
        assert step["subset"] == [step["alone"][i] for i in step["order"]]
        assert len(set(step["together"])) > 1


def test_a_run_sampled_by_another_sampler_is_not_resumed(tmp_path, capsys, smollm2):
    """A run whose config.json was written before the sampler was recorded (tokens drawn by the
    earlier sampler) is refused in one line that names the field, and nothing on disk changes."""
    config = small_config(tmp_path, "old", task={"size": 2}, refine={"steps": 1}, batch_size=2)
    assert main(["run", "--config", str(config), "--no-progress"]) == 0
    cfg_file = tmp_path / "old" / "config.json"
    data = json.loads(cfg_file.read_text())
    del data["config"]["decode"]["sampler"]
    data["config_hash"] = "0123456789abcdef"  # what the earlier version hashed
    cfg_file.write_text(json.dumps(data))
    before = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["run", "--config", str(config), "--no-progress"]) == 2
    (line,) = error_lines(capsys)
    assert "decode.sampler: absent -> 'inverse-cdf'" in line and "--overwrite" in line
    after = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir() if p.is_file()}
    assert after == before
