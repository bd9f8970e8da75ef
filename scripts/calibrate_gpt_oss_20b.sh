#!/usr/bin/env bash
# Calibration runs of openai/gpt-oss-20b on AIME 2024, AIME 2025 and GPQA-Diamond (the paper's
# settings: tje_hf/configs/runs/gpt-oss-20b_*.yaml: 4 refinement steps of at most 8192 new tokens, policy
# "all", temperature 0.7, batch 16), then one report per run and a comparison of the three.
#
# GPU memory (`python -m tje_hf.models.memory gpt-oss-20b --batch 16 --context 16384 --quantization
# mxfp4`, printed first; totals include one attention layer's transient):
#   MXFP4 (needs CUDA, triton >= 3.4 and `kernels`): weights 12.8 GiB + KV cache 12.1 GiB (the
#     sliding-window layers keep their whole past: the refinement loop records it) + attention
#     8.5 GiB + logits 0.1 GiB = 33.5 GiB at 16,384 tokens a sequence (prompt + earlier answers +
#     8192 new). `tje run` checks the longest conversation, 34,816 tokens: 56.5 GiB, which passes
#     with >= 62.9 GiB free: one 80 GB GPU; on a 48 GB card use batch_size=10 (40.1 GiB).
#   Without the MXFP4 kernels Transformers dequantises to bf16: 82.7 GiB at 34,816 tokens -> one
#     H200, or batch_size=11 on one 80 GB GPU (69.0 GiB).
#
# Wall time: tokens / throughput. Assumed: Transformers' eager decode at batch 16 takes ~60 ms a
# step on one H100/H200 (launch-bound; replace with the batch-32 ms/step that
# scripts/gpu_check.py measures) = ~270 tokens/s; assumed mean tokens per step (high effort):
# 6000 on AIME, 4000 on GPQA.
#   aime24 / aime25: 30 problems x 4 steps x 6000 / 270 = ~0.75 h each
#   gpqa_diamond:   198 problems x 4 steps x 4000 / 270 = ~3.3 h
#   total ~4.8 h; up to ~9.3 h because a batch decodes until its longest row stops (often the
#   8192 cap): ceil(problems / 16) x 4 steps x 8192 steps x 60 ms.
# Runs resume where they stopped: run this script again after an interruption.
#
# Extra arguments go to every `tje run` as overrides, e.g. `batch_size=8`. Data parallel over
# GPUs: TJE_RUN="accelerate launch -m tje_hf.cli run" scripts/calibrate_gpt_oss_20b.sh
set -euo pipefail
MODELS=(gpt-oss-20b)
MEMORY_ARGS=(gpt-oss-20b --batch 16 --context 16384 --quantization mxfp4)
source "$(dirname "$0")/calibrate_common.sh"
