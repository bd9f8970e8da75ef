"""Robustness of the loop and the runner: a conversation that outgrows the context, caches that
cannot be cut back, a model that turns its cache off, a task edited between a run and its
resume, top-k sizes over the vocabulary, NaN logits, and progress within a step."""

from __future__ import annotations

import json
import time

import pytest
import torch
from small_runs import error_lines, small_config, tiny_model_dir
from tiny_models import build_tiny_qwen3_moe

from tje_hf import DecodeConfig, RefineConfig
from tje_hf.cli import main
from tje_hf.config import load_run_config
from tje_hf.errors import ConfigError, ModelLoadError
from tje_hf.generation.hf import HfBackend, context_room
from tje_hf.generation.kvcache import CachedPrefix, cuttable, new_cache, plan_reuse
from tje_hf.generation.outputs import length_stop
from tje_hf.generation.tracker import EntropyTracker, ProgressReport
from tje_hf.models.families import make_family
from tje_hf.models.loading import LoadedModel
from tje_hf.records import read_records
from tje_hf.refinement import refine
from tje_hf.runner import ProgressMeter, run

SHORT = [{"role": "user", "content": "1+1?"}]
LONG = [{"role": "user", "content": "Please add these numbers: " + " + ".join(str(i) for i in range(60)) + "?"}]


@pytest.fixture(scope="module")
def tiny(smollm2):
    """A tiny random Qwen3-MoE with SmolLM2's tokenizer, the generic family."""
    tok = smollm2.tokenizer
    model = build_tiny_qwen3_moe(vocab_size=len(tok))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok, make_family("generic")


# --------------------------------------------------------------------------------------------
# 1. A conversation that outgrows the context


def test_a_row_cut_by_the_context_is_named_so_alone_and_in_a_batch(tiny, monkeypatch):
    """A row whose prompt leaves fewer tokens than max_new_tokens stops at that room as
    ``context_full`` whether it is alone (the call's own limit is cut to its room) or beside a
    shorter prompt (a per-row stop cuts it): its label does not depend on the batch."""
    model, tok, _ = tiny
    short, long = (tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=False)
                   for m in (SHORT, LONG))
    monkeypatch.setattr(model.config, "max_position_embeddings", len(long) + 5)
    decode = DecodeConfig(max_new_tokens=8, min_new_tokens=5, temperature=0.0)  # no EOS within the room
    alone = HfBackend(model, tok).generate([long], decode, seeds=[0]).results[0]
    beside = HfBackend(model, tok).generate([short, long], decode, seeds=[1, 0]).results
    assert (alone.n_generated, alone.stop_reason) == (5, "context_full")
    assert (beside[1].n_generated, beside[1].stop_reason) == (5, "context_full")
    assert beside[1].token_ids == alone.token_ids
    assert (beside[0].n_generated, beside[0].stop_reason) == (8, "max_new_tokens")
    # the caller's budget wins a tie with the room; a budget above the room leaves context_full
    assert HfBackend(model, tok).generate([long], decode, seeds=[0], token_budget=[5]).results[0].stop_reason \
        == "token_budget"
    assert length_stop("max_new_tokens", 5, 8, 6, 5) == "context_full"
    assert length_stop("max_new_tokens", 5, 8, 5, 5) == "token_budget"
    assert length_stop("max_new_tokens", 8, 8, None, 9) == "max_new_tokens"
    assert length_stop("eos", 3, 8, None, 5) == "eos"


def test_problem_outgrowing_the_context_stops_alone_and_keeps_its_steps(tiny):
    model, tok, family = tiny
    decode = DecodeConfig(max_new_tokens=8, min_new_tokens=8, temperature=0.0)
    ids = ["short", "long"]
    free = refine(HfBackend(model, tok), family, [SHORT, LONG], ids, RefineConfig(steps=2), decode)
    short2, long2 = (len(r.steps[1].prompt_ids) for r in free)
    assert short2 + 16 < long2
    saved = model.config.max_position_embeddings
    model.config.max_position_embeddings = context = long2 - 1  # step 2 of "long" cannot start
    try:
        for reuse in (False, True):
            got = refine(HfBackend(model, tok), family, [SHORT, LONG], ids, RefineConfig(steps=3, reuse_cache=reuse),
                         decode)
            short, long = got
            assert long.stopped == "context_full" and len(long.steps) == 1
            assert long.steps[0].generation.token_ids == free[1].steps[0].generation.token_ids
            assert len(short.steps) >= 2 and short.steps[1].generation.token_ids == free[0].steps[1].generation.token_ids
            for res in got:
                for step in res.steps:
                    assert step.generation.prompt_tokens + step.generation.n_generated <= context
    finally:
        model.config.max_position_embeddings = saved


def test_a_row_with_little_room_stops_at_the_context_not_the_batch():
    assert context_room([10, 50], 20, 60) == (20, [50, 10])
    assert context_room([10, 20], 20, 60) == (20, None)
    assert context_room([10, 20], 20, None) == (20, None)


def test_runner_records_the_finished_steps_and_why_a_problem_stopped(tmp_path, smollm2):
    from tje_hf.runner import _messages
    from tje_hf.tasks import load_task

    tok = smollm2.tokenizer
    q_long = LONG[0]["content"]
    m = 6
    model_dir = tiny_model_dir(tmp_path, smollm2, template=True, context=4096)
    data = tmp_path / "qa.jsonl"
    rows = [{"id": "short", "q": SHORT[0]["content"], "a": "2"}, {"id": "long", "q": q_long, "a": "1770"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = small_config(tmp_path, model={"name_or_path": str(model_dir), "family": "generic"},
                        task={"name": "local", "path": str(data), "columns": {"id": "id", "question": "q",
                                                                             "answer": "a"}},
                        batch_size=2, refine={"steps": 2}, decode={"max_new_tokens": m, "min_new_tokens": m})
    cfg = load_run_config(path)
    long_problem = next(p for p in load_task(cfg.task).problems if p.id == "long")
    long1 = len(make_family("generic").render(tok, _messages(cfg, long_problem)))
    # step 1 fits with room; step 2 (step 1, its answer and the instruction) cannot
    config_file = model_dir / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()),
                                       "max_position_embeddings": long1 + m + 1}))
    assert main(["run", "--config", str(path), "--no-progress"]) == 0
    records = {r["problem_id"]: r for r in read_records(tmp_path / "run")}
    assert records["long"]["n_steps"] == 1 and records["long"]["stopped"] == "context_full"
    assert records["long"]["steps"][0]["n_generated"] == m
    assert records["short"]["n_steps"] == 2 and records["short"]["stopped"] is None


# --------------------------------------------------------------------------------------------
# 2. Cache reuse robustness


def test_reuse_runs_when_the_generation_config_turns_the_cache_off(smollm2):
    model, tok = smollm2.model, smollm2.tokenizer
    family = make_family("generic")
    decode = DecodeConfig(max_new_tokens=3, temperature=0.0)  # without a cache every step recomputes all
    saved = model.generation_config.use_cache
    model.generation_config.use_cache = False
    try:
        runs = [refine(HfBackend(model, tok), family, [SHORT, [{"role": "user", "content": "Is 7 prime?"}]], ["a", "b"],
                       RefineConfig(steps=2, reuse_cache=reuse), decode) for reuse in (False, True)]
    finally:
        model.generation_config.use_cache = saved
    plain, reused = runs
    for p, r in zip(plain, reused, strict=True):
        assert [s.generation.token_ids for s in p.steps] == [s.generation.token_ids for s in r.steps]
    assert [r.steps[1].reuse.mode for r in reused] == ["reused", "reused"]


class RecurrentLayer:
    """A layer that holds a recurrent state, not per-token keys and values (like Qwen3-Next's
    linear-attention layers)."""

    is_initialized = True

    def __init__(self):
        self.state = torch.zeros(2, 4)


def _prefix(smollm2, prompts):
    model, tok = smollm2.model, smollm2.tokenizer
    backend = HfBackend(model, tok)
    backend.generate(prompts, DecodeConfig(max_new_tokens=4, temperature=0.0), reuse_cache=True)
    return backend


def test_a_cache_with_a_non_kv_layer_plans_a_fresh_prefill(smollm2):
    tok = smollm2.tokenizer
    prompts = [tok("The sky is")["input_ids"], tok("One two three four")["input_ids"]]
    backend = _prefix(smollm2, prompts)
    prefix: CachedPrefix = backend._prefix
    assert cuttable(prefix.cache)
    prefix.cache.layers[-1] = RecurrentLayer()
    assert not cuttable(prefix.cache)
    new = [prefix.row_tokens(r) + [13, 14] for r in range(2)]
    plan = plan_reuse(prefix, new, backend.pad_token_id, smollm2.model.device)
    assert plan.mode == "fresh" and plan.cache is None and plan.reused == [0, 0]


def test_backend_falls_back_to_a_fresh_prefill_and_records_it(smollm2):
    tok = smollm2.tokenizer
    prompts = [tok("The sky is")["input_ids"]]
    backend = _prefix(smollm2, prompts)
    backend._prefix.cache.layers[-1] = RecurrentLayer()
    nxt = [backend._prefix.row_tokens(0) + [13]]
    out = backend.generate(nxt, DecodeConfig(max_new_tokens=3, temperature=0.0), conversation_ids=[0],
                           reuse_cache=True)
    assert out.reuse[0].mode == "fresh" and out.reuse[0].prefilled == len(nxt[0])
    ref = HfBackend(smollm2.model, tok).generate(nxt, DecodeConfig(max_new_tokens=3, temperature=0.0))
    assert out.results[0].token_ids == ref.results[0].token_ids


def test_linear_attention_layers_are_not_cuttable(smollm2):
    from transformers.cache_utils import LinearAttentionLayer

    cache = new_cache(smollm2.model)
    assert cuttable(cache)
    cache.layers[-1] = LinearAttentionLayer()
    assert not cuttable(cache)


# --------------------------------------------------------------------------------------------
# 3. A task edited between a run and its resume


def test_a_task_edited_before_the_resume_is_refused(tmp_path, smollm2, capsys):
    data = tmp_path / "qa.jsonl"
    rows = [{"id": "a", "q": "1+1?", "a": "2"}, {"id": "b", "q": "2+2?", "a": "4"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = small_config(tmp_path, task={"name": "local", "path": str(data),
                                        "columns": {"id": "id", "question": "q", "answer": "a"}, "limit": 1},
                        batch_size=1, refine={"steps": 1}, decode={"max_new_tokens": 3})
    cfg = load_run_config(path)
    run(cfg, lm=smollm2, progress=False)  # problem "a" only
    run(load_run_config(small_config(tmp_path, task={"name": "local", "path": str(data), "columns": {
        "id": "id", "question": "q", "answer": "a"}, "limit": 1}, batch_size=1, refine={"steps": 1},
        decode={"max_new_tokens": 3})), lm=smollm2, progress=False)  # unchanged: resumes, nothing to do
    rows[0]["a"] = "3"  # the gold of a finished problem changes
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["run", "--config", str(path), "--no-progress"]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "task's problems changed" in err[0]


# --------------------------------------------------------------------------------------------
# 4. Silently accepted inputs


def test_top_k_over_the_vocabulary_is_an_error_before_generating(tmp_path, smollm2):
    cfg = load_run_config(small_config(tmp_path, decode={"signals": {"ks": [5, 20, 60000]}}))
    with pytest.raises(ConfigError, match=r"\[60000\] exceed the model's vocabulary of 49152"):
        run(cfg, lm=smollm2, progress=False)
    assert read_records(cfg.out_dir) == []


def test_nan_logits_fail_the_run_naming_problems_and_steps(tmp_path, smollm2):
    tok = smollm2.tokenizer
    model = build_tiny_qwen3_moe(vocab_size=len(tok))
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    lm = LoadedModel(HfBackend(model, tok), smollm2.spec, "generic", "local", "tiny-nan")
    cfg = load_run_config(small_config(tmp_path, refine={"steps": 1}, decode={"max_new_tokens": 3}))
    with pytest.raises(ModelLoadError, match=r"invalid .* at every token of: arith-0000 step 1, arith-0001 step 1;"):
        run(cfg, lm=lm, progress=False)
    assert read_records(cfg.out_dir) == []  # nothing recorded: a resume recomputes them


# --------------------------------------------------------------------------------------------
# 5. Progress within a step


class FakeTracker:
    def __init__(self):
        self.n_generated = torch.tensor([3, 4])
        self.device = torch.device("cpu")


def test_progress_reads_the_device_at_most_once_per_interval(monkeypatch):
    clock = {"t": 100.0}
    monkeypatch.setattr(time, "monotonic", lambda: clock["t"])
    seen = []
    report = ProgressReport(FakeTracker(), seen.append, interval=0.5)
    for _ in range(1000):  # 1000 decoding steps over 10 simulated seconds
        clock["t"] += 0.01
        assert not report(torch.zeros(2, 1, dtype=torch.long)).any()
    assert report.reads == len(seen) <= 20 and seen[0] == 7


def test_progress_reports_during_a_real_generate_at_a_low_rate(smollm2):
    from tje_hf.generation.hf import generate_batch
    from tje_hf.generation.outputs import left_pad

    tok = smollm2.tokenizer
    ids, mask = left_pad([tok("Count: one, two, three,")["input_ids"]], tok.pad_token_id)
    seen, interval = [], 0.2
    start = time.monotonic()
    out = generate_batch(smollm2.model, tok, ids, mask, DecodeConfig(max_new_tokens=20, min_new_tokens=20,
                                                                       temperature=0.0),
                         progress=seen.append, progress_interval=interval)
    wall = time.monotonic() - start
    assert out.results[0].n_generated == 20
    assert seen == sorted(seen) and all(0 < n <= 20 for n in seen)
    assert len(seen) <= wall / interval + 1  # at most one host read per interval
    print(f"progress: {len(seen)} reads in {wall:.2f}s, {len(seen) / wall:.2f} reads/s at interval {interval}s")


def test_no_host_read_per_step_from_progress(monkeypatch):
    """With an interval longer than the call, the progress criterion reads nothing."""
    calls = {"n": 0}
    original = torch.Tensor.__int__

    def counting(self):
        calls["n"] += 1
        return original(self)

    monkeypatch.setattr(torch.Tensor, "__int__", counting)
    seen = []
    tracker = EntropyTracker(1, 4, (5,), [0], "cpu")
    report = ProgressReport(tracker, seen.append, interval=3600)
    before = calls["n"]
    for _ in range(50):
        report(torch.zeros(1, 1, dtype=torch.long))
    assert seen == [] and report.reads == 0 and calls["n"] == before


class FakeBar:
    def __init__(self):
        self.n, self.postfix = 0.0, ""

    def update(self, by):
        self.n += by

    def set_postfix_str(self, text):
        self.postfix = text


def test_the_bar_moves_with_the_tokens_of_a_step():
    bar = FakeBar()
    clock = iter([0.0, 10.0, 20.0, 30.0])
    meter = ProgressMeter(bar, steps=2, max_new_tokens=100, clock=lambda: next(clock))
    meter.start_batch(4)
    meter.on_tokens(1, 200)  # half of step 1's 4 x 100 tokens
    assert bar.n == pytest.approx(1.0) and "20.0 tok/s" in bar.postfix and "step 1/2" in bar.postfix
    meter.on_step(1, 300)
    assert bar.n == pytest.approx(2.0)
    meter.on_tokens(2, 100)
    assert 2.0 < bar.n < 4.0
