"""The GPU path of a fine-grained FP8 checkpoint (``model.quantization: fp8``, the packaged
``qwen3-30b-a3b-*-2507-fp8`` configs), checked on the CPU, and the README's memory table.

A tiny random Qwen3-MoE (SmolLM2's vocabulary and tokenizer) is written as a fine-grained FP8
checkpoint in the layout of ``Qwen/Qwen3-30B-A3B-*-2507-FP8``: per-expert ``gate_proj`` /
``up_proj`` / ``down_proj`` and the attention projections in ``float8_e4m3fn`` with a
``weight_scale_inv`` per 128 x 128 block; embeddings, norms, router and ``lm_head`` in bf16 and in
``modules_to_not_convert``; ``quant_method: fp8``, ``weight_block_size: [128, 128]``.

* What a GPU of compute capability >= 8.9 holds: Transformers' own FP8 loading (its environment
  check, which refuses a CPU, bypassed) puts exactly the bytes :func:`estimate_memory` counts for
  ``fp8`` in memory, FP8 where the estimate says FP8. No FP8 matmul runs here (that needs the
  Triton kernel from the Hub, and a GPU).
* What the CPU (or a GPU below 8.9) does: ``tje_hf.load_model`` with ``quantization: fp8``
  dequantises to bf16, the memory check estimates exactly what is loaded, and the model generates,
  its logits close to the bf16 weights the checkpoint was made from.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from tje_hf import DecodeConfig, SignalConfig
from tje_hf.config import ModelSpec, load_run_config, packaged_configs
from tje_hf.generation.hf import generate_batch
from tje_hf.models.loading import load_model
from tje_hf.models.memory import GiB, effective_quantization, estimate_memory, reference_config
from tje_hf.runner import PROMPT_ALLOWANCE, longest_conversation

ROOT = Path(__file__).resolve().parent.parent
BLOCK = 128
FP8 = torch.float8_e4m3fn


def _quantize_block(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` (out x in) as float8_e4m3fn and one bf16 inverse scale per 128 x 128 block."""
    rows, cols = weight.shape
    br, bc = -(-rows // BLOCK), -(-cols // BLOCK)
    padded = torch.zeros(br * BLOCK, bc * BLOCK)
    padded[:rows, :cols] = weight.float()
    blocks = padded.view(br, BLOCK, bc, BLOCK)
    scale = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12) / torch.finfo(FP8).max
    q = (blocks / scale[:, None, :, None]).view(br * BLOCK, bc * BLOCK)[:rows, :cols].to(FP8)
    return q, scale.to(torch.bfloat16)


@pytest.fixture(scope="module")
def fp8_checkpoint(smollm2, tmp_path_factory):
    """(bf16 directory, FP8 directory) of the same tiny Qwen3-MoE."""
    from safetensors.torch import load_file, save_file
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    tok = smollm2.tokenizer
    torch.manual_seed(0)
    config = Qwen3MoeConfig(vocab_size=49152, hidden_size=256, intermediate_size=512, moe_intermediate_size=128,
                            head_dim=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                            num_experts=4, num_experts_per_tok=2, norm_topk_prob=True,
                            max_position_embeddings=4096, tie_word_embeddings=False,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id)
    model = Qwen3MoeForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)  # peaked distributions: a meaningful argmax
    model = model.to(torch.bfloat16)
    root = tmp_path_factory.mktemp("tiny-qwen3-moe-fp8")
    bf16_dir, fp8_dir = root / "bf16", root / "fp8"
    for d in (bf16_dir, fp8_dir):
        model.save_pretrained(d)
        tok.save_pretrained(d)
    state = load_file(bf16_dir / "model.safetensors")
    assert any(".mlp.experts.0.gate_proj.weight" in k for k in state)  # Qwen's per-expert layout
    out = {}
    for key, value in state.items():
        if key.endswith("_proj.weight"):  # q/k/v/o and every expert's gate/up/down
            out[key], out[key.replace(".weight", ".weight_scale_inv")] = _quantize_block(value)
        else:
            out[key] = value
    save_file(out, fp8_dir / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((fp8_dir / "config.json").read_text())
    cfg["quantization_config"] = {
        "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [BLOCK, BLOCK],
        "modules_to_not_convert": ["lm_head"] + [f"model.layers.{i}.{m}" for i in range(2)
                                                 for m in ("input_layernorm", "mlp.gate", "post_attention_layernorm")],
    }
    (fp8_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    return bf16_dir, fp8_dir


def _bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def test_fp8_in_memory_is_what_the_estimate_counts(fp8_checkpoint, monkeypatch):
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.quantizers.quantizer_finegrained_fp8 import FineGrainedFP8HfQuantizer

    _, fp8_dir = fp8_checkpoint
    config = AutoConfig.from_pretrained(fp8_dir)
    assert effective_quantization("fp8", config, cuda=True, fp8_gpu=True) == "fp8"
    # What validate_environment lets through on a GPU of compute capability >= 8.9.
    monkeypatch.setattr(FineGrainedFP8HfQuantizer, "validate_environment", lambda self, *a, **k: None)
    model = AutoModelForCausalLM.from_pretrained(fp8_dir, dtype=torch.bfloat16)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    layer = "model.layers.0."
    for name in ("self_attn.q_proj.weight", "self_attn.o_proj.weight", "mlp.experts.gate_up_proj",
                 "mlp.experts.down_proj"):
        assert dtypes[layer + name] == FP8, name
    assert dtypes[layer + "mlp.experts.gate_up_proj_scale_inv"] == torch.float32
    for name in ("model.embed_tokens.weight", "lm_head.weight", layer + "mlp.gate.weight",
                 layer + "input_layernorm.weight", layer + "self_attn.q_norm.weight"):
        assert dtypes[name] == torch.bfloat16, name
    est = estimate_memory(config, dtype="bfloat16", quantization="fp8", context_tokens=8)
    assert est.weights_bytes == _bytes(model)


def test_fp8_checkpoint_on_cpu_loads_dequantised_and_generates(fp8_checkpoint, caplog):
    from transformers import AutoModelForCausalLM

    bf16_dir, fp8_dir = fp8_checkpoint
    with caplog.at_level("WARNING", logger="tje_hf.models.quantization"):
        lm = load_model(ModelSpec(name_or_path=str(fp8_dir), quantization="fp8", dtype="bfloat16", family="generic"),
                        device="cpu", batch_size=2, context_tokens=64)
    assert "dequantise" in caplog.text
    model = lm.model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert effective_quantization("fp8", model.config, cuda=False) == "none"
    est = estimate_memory(model.config, dtype="bfloat16", quantization="none", context_tokens=8)
    assert est.weights_bytes == _bytes(model)
    # Dequantised FP8 against the bf16 weights it was made from: close, not equal (FP8 rounding).
    reference = AutoModelForCausalLM.from_pretrained(bf16_dir, dtype=torch.bfloat16).eval()
    ids = torch.tensor([[1, 500, 1200, 37, 4000, 9, 77, 310]])
    with torch.no_grad():
        a, b = reference(ids).logits.float(), model(ids).logits.float()
    assert not torch.equal(a, b)
    assert (a - b).abs().max() < 0.1 * a.abs().max()
    decode = DecodeConfig(max_new_tokens=6, min_new_tokens=6, temperature=0.0, signals=SignalConfig())
    out = generate_batch(model, lm.tokenizer, ids.repeat(2, 1), torch.ones(2, 8, dtype=torch.long), decode)
    assert all(r.n_generated == 6 for r in out.results)
    assert all(0 <= r.means["all"]["topk_entropy@20"] <= 4.33 for r in out.results)


def test_fp8_and_mxfp4_kernel_probes(monkeypatch):
    """``kernels`` counts only in the range Transformers accepts; ``fp8`` on a GPU that keeps FP8
    needs it (Transformers would load, then fail at the first forward), elsewhere it dequantises."""
    from tje_hf.errors import ModelLoadError
    from tje_hf.models import quantization as q

    low, high = q._kernels_range()
    assert q.kernels_requirement() == f"kernels>={low},<{high}"
    versions = {"triton": "3.4.0", "kernels": "0.17.2"}
    monkeypatch.setattr(q, "_version", lambda name: versions.get(name))
    monkeypatch.setattr(q.importlib.util, "find_spec", lambda name: object() if name in versions else None)
    spec = ModelSpec(name_or_path="Qwen/Qwen3-30B-A3B-Thinking-2507-FP8", quantization="fp8")
    if (0, 17, 2) < tuple(int(x) for x in low.split(".")):  # Transformers 5.23-5.24: 0.18.2 <= kernels < 0.19
        assert q.missing_mxfp4_kernels() == [q.kernels_requirement()]
        assert q.missing_fp8_kernels() == [q.kernels_requirement()]
        monkeypatch.setattr(q, "fp8_native_gpu", lambda: True)
        with pytest.raises(ModelLoadError, match=r"model.quantization='fp8'.*pip install 'kernels>="):
            q.quantization_config(spec)
    versions.update(kernels=low, triton="3.3.1")
    assert q.missing_mxfp4_kernels() == ["triton>=3.4.0"]
    assert q.missing_fp8_kernels() == []
    monkeypatch.setattr(q, "fp8_native_gpu", lambda: True)
    assert q.quantization_config(spec) is None  # the checkpoint's own quantization_config applies
    monkeypatch.setattr(q, "fp8_native_gpu", lambda: False)
    assert q.quantization_config(spec) is None  # Transformers dequantises: a warning, no error


# --------------------------------------------------------------------------------------------
# The packaged FP8 configs and README's "Run on your GPU" memory table


def test_packaged_fp8_configs():
    models = packaged_configs("models")
    for variant, family in (("thinking", "qwen3-thinking"), ("instruct", "qwen3-instruct")):
        name = f"qwen3-30b-a3b-{variant}-2507-fp8"
        assert name in models
        for task in ("aime24", "aime25", "gpqa_diamond"):
            cfg = load_run_config(f"{name}_{task}")
            assert cfg.model.name_or_path == f"Qwen/Qwen3-30B-A3B-{variant.capitalize()}-2507-FP8"
            assert (cfg.model.quantization, cfg.model.family, cfg.model.dtype) == ("fp8", family, "bfloat16")
            assert (cfg.refine.steps, cfg.decode.max_new_tokens, cfg.decode.temperature, cfg.refine.policy) == \
                (4, 8192, 0.7, "all")
            assert cfg.task.name == task and cfg.out_dir == f"runs/{name}_{task}"
            # Sized for a 48 GiB card: the check before loading (it sizes the KV cache and the
            # attention's transient for the run's longest conversation) keeps 10 % headroom and
            # must pass with the 46.5 GiB free that the configs and README quote.
            assert longest_conversation(cfg) == 2048 + 4 * 8192
            est = estimate_memory(reference_config("qwen3-30b-a3b"), dtype="bfloat16", quantization="fp8",
                                  batch_size=cfg.batch_size, context_tokens=longest_conversation(cfg))
            assert est.total_bytes <= 0.9 * 46.5 * GiB


def _readme_memory_rows() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Run on your GPU", 1)[1].split("\n## ", 1)[0]
    table = section.split("<!-- memory-table -->", 2)[1]
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in table.strip().splitlines()[2:] if line.startswith("|")]


def test_readme_memory_table_is_the_estimators():
    """Each row: weights, KV cache, activations (the larger of the attention's and the MoE
    experts' transients) and total at 16,384 tokens a sequence (the
    calibrate scripts' bound), the total at 2048 + 4 x 8192 = 34,816 (what the check before loading
    sizes), and the free memory that check needs (total / 0.9, rounded up), all in GiB, as the
    estimator gives them."""
    rows = _readme_memory_rows()
    assert len(rows) >= 8
    for row in rows:
        command = re.search(r"`([^`]+)`", row[0]).group(1).split()
        model, args = command[0], command[1:]
        quant = args[args.index("--quantization") + 1] if "--quantization" in args else "none"
        batch = int(args[args.index("--batch") + 1]) if "--batch" in args else 16
        kw = {"dtype": "bfloat16", "quantization": quant, "batch_size": batch}
        est = estimate_memory(reference_config(model), context_tokens=16384, **kw)
        checked = estimate_memory(reference_config(model), context_tokens=PROMPT_ALLOWANCE + 4 * 8192, **kw)
        free = math.ceil(checked.total_bytes / GiB / 0.9 * 10) / 10
        numbers = tuple(float(x) for x in row[2:8])
        assert numbers == (round(est.weights_bytes / GiB, 1), round(est.kv_cache_bytes / GiB, 1),
                           round(est.activation_bytes / GiB, 1), round(est.total_bytes / GiB, 1),
                           round(checked.total_bytes / GiB, 1), free), row
