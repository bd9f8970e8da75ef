#!/usr/bin/env bash
# Calibration runs of openai/gpt-oss-120b on AIME 2024, AIME 2025 and GPQA-Diamond (the paper's
# settings: tje_hf/configs/runs/gpt-oss-120b_*.yaml: 4 refinement steps of at most 8192 new tokens, policy
# "all", temperature 0.7, batch 16, device_map auto), then one report per run and a comparison.
#
# GPU memory (`python -m tje_hf.models.memory gpt-oss-120b --batch 16 --context 16384 --quantization
# mxfp4`, printed first; totals include one attention layer's transient):
#   MXFP4 (needs CUDA, triton >= 3.4 and `kernels`): weights 60.8 GiB + KV cache 18.1 GiB (the
#     sliding-window layers keep their whole past: the refinement loop records it) + attention
#     8.5 GiB + logits 0.1 GiB = 87.5 GiB at 16,384 tokens a sequence (prompt + earlier answers +
#     8192 new). `tje run` checks the longest conversation, 34,816 tokens: 117.3 GiB, which passes
#     with >= 130.4 GiB free: one H200 (141 GB), or two 80 GB GPUs (device_map auto); on ONE 80 GB
#     GPU use batch_size=2 (67.8 GiB).
#   Without the MXFP4 kernels Transformers dequantises to bf16: 274.1 GiB at 34,816 tokens
#     -> four 80 GB GPUs or three H200.
#
# Wall time: tokens / throughput. Assumed: Transformers' eager decode at batch 16 takes ~90 ms a
# step (36 layers, 128 experts; replace with scripts/gpu_check.py's measurements scaled by
# 36/24 layers) = ~180 tokens/s; assumed mean tokens per step (high effort): 5000 on AIME, 3500
# on GPQA.
#   aime24 / aime25: 30 problems x 4 steps x 5000 / 180 = ~0.9 h each
#   gpqa_diamond:   198 problems x 4 steps x 3500 / 180 = ~4.3 h
#   total ~6.2 h; up to ~14 h because a batch decodes until its longest row stops (often the
#   8192 cap): ceil(problems / 16) x 4 steps x 8192 steps x 90 ms.
# Runs resume where they stopped: run this script again after an interruption.
#
# Extra arguments go to every `tje run` as overrides, e.g. `batch_size=2`.
set -euo pipefail
MODELS=(gpt-oss-120b)
MEMORY_ARGS=(gpt-oss-120b --batch 16 --context 16384 --quantization mxfp4)
source "$(dirname "$0")/calibrate_common.sh"
