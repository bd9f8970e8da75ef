#!/usr/bin/env bash
# Calibration runs of Qwen/Qwen3-30B-A3B-Thinking-2507 and Qwen/Qwen3-30B-A3B-Instruct-2507 on
# AIME 2024, AIME 2025 and GPQA-Diamond (the paper's settings: tje_hf/configs/runs/qwen3-30b-a3b-*-2507_*.yaml:
# 4 refinement steps of at most 8192 new tokens, policy "all", temperature 0.7, batch 16), then one
# report per run and one comparison of all six.
#
#   scripts/calibrate_qwen3_30b_a3b.sh                   # bf16 weights (the paper's checkpoints)
#   QWEN_FORMAT=fp8 scripts/calibrate_qwen3_30b_a3b.sh   # Qwen's FP8 builds (-2507-FP8), batch 3, 48 GB cards
#
# GPU memory, each variant (`python -m tje_hf.models.memory qwen3-30b-a3b --batch 16 --context 16384`;
# totals include one attention layer's transient):
#   bf16: weights 56.9 GiB + KV cache 24.0 GiB + attention 4.5 GiB = 85.4 GiB at 16,384 tokens a
#     sequence (prompt + earlier answers + 8192 new). The check that `tje run` makes before loading
#     sizes the longest conversation 4 steps can build, 2048 + 4 x 8192 = 34,816 tokens: 117.5 GiB,
#     which passes with >= 130.6 GiB free: one H200 (141 GB), or two 80 GB GPUs with
#     model.device_map=auto; on ONE 80 GB GPU batch_size=3 (68.2 GiB, >= 75.9 GiB free).
#   model.quantization=4bit does NOT help here: bitsandbytes (Transformers 5.x) quantises nn.Linear
#     layers only, and the 29 B fused MoE expert parameters stay bf16 (weights 55.7 GiB).
#   QWEN_FORMAT=fp8 (tje_hf/configs/runs/qwen3-30b-a3b-*-2507-fp8_*.yaml, model.quantization=fp8):
#     Qwen's fine-grained FP8 checkpoints, kept in FP8 by Transformers on a GPU of compute
#     capability >= 8.9 with the `kernels` package: weights 29.0 GiB (experts included); at the
#     packaged batch 3 the check before loading needs 29.0 + KV cache 9.6 (3 x 34,816 tokens) +
#     attention 1.8 = 40.4 GiB, which passes with >= 44.9 GiB free: a 48 GB card (~46.5 GiB free;
#     batch_size=2: 36.6 GiB, >= 40.7 GiB free).
#     Below compute capability 8.9 Transformers dequantises them to bf16 (56.9 GiB).
#
# Wall time: tokens / throughput. Assumed: Transformers' decode at batch 16 takes ~80 ms a step
# (48 layers, 128 experts; replace with the batch-32 ms/step that scripts/gpu_check.py measures)
# = ~200 tokens/s; assumed mean tokens per step: Thinking 7000 on AIME, 5000 on GPQA; Instruct
# 3000 on AIME, 1200 on GPQA.
#   Thinking: 2 x (30 x 4 x 7000 / 200 = ~1.2 h) + 198 x 4 x 5000 / 200 = ~5.5 h  -> ~7.8 h
#   Instruct: 2 x (30 x 4 x 3000 / 200 = ~0.5 h) + 198 x 4 x 1200 / 200 = ~1.3 h  -> ~2.3 h
#   total ~10 h; up to ~25 h because a batch decodes until its longest row stops (the 8192 cap
#   at worst): ceil(problems / 16) x 4 steps x 8192 steps x 80 ms = ~12.4 h per variant.
#   QWEN_FORMAT=fp8 at batch 3: no step time is assumed (FP8 kernels, other GPUs); measure one with
#   a short run (README, "Run on your GPU") before planning: the worst case is then
#   ceil(problems / 3) x 4 steps x 8192 steps x (your ms a step).
# Runs resume where they stopped: run this script again after an interruption.
#
# Extra arguments go to every `tje run` as overrides, e.g. `batch_size=8 model.device_map=auto`.
set -euo pipefail
case "${QWEN_FORMAT:-bf16}" in
    bf16)
        MODELS=(qwen3-30b-a3b-thinking-2507 qwen3-30b-a3b-instruct-2507)
        MEMORY_ARGS=(qwen3-30b-a3b --batch 16 --context 16384) ;;
    fp8)
        MODELS=(qwen3-30b-a3b-thinking-2507-fp8 qwen3-30b-a3b-instruct-2507-fp8)
        MEMORY_ARGS=(qwen3-30b-a3b --batch 3 --context 34816 --quantization fp8) ;;
    *)
        echo "QWEN_FORMAT=${QWEN_FORMAT}: must be bf16 or fp8" >&2
        exit 2 ;;
esac
source "$(dirname "$0")/calibrate_common.sh"
