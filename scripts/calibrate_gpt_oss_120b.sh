#!/usr/bin/env bash
# Calibration runs of openai/gpt-oss-120b on AIME 2024, AIME 2025 and GPQA-Diamond (the paper's
# settings: tje_hf/configs/runs/gpt-oss-120b_*.yaml: 4 refinement steps of at most 8192 new tokens, policy
# "all", temperature 0.7, batch 16, device_map auto), then one report per run and a comparison.
#
# GPU memory (tje_hf.models.memory; `python -m tje_hf.models.memory gpt-oss-120b --batch 16 --context 16384
# --quantization mxfp4`; 16k tokens per sequence bounds prompt + earlier answers + 8192 new):
#   MXFP4 (needs CUDA, triton >= 3.4 and `kernels`): weights 60.8 GiB + KV cache 18.0 GiB
#     (36 layers x 72 KiB/token; the 18 sliding-window layers are kept at full length because the
#     refinement loop records their past) + logits 0.1 GiB = 78.9 GiB -> one H200 (141 GB), or
#     two 80 GB GPUs (device_map auto); on ONE 80 GB GPU use batch_size=8 (60.8 + 9.0 = 69.9 GiB).
#   Without the MXFP4 kernels Transformers dequantises to bf16: 217.6 + 18.0 = 235.7 GiB
#     -> four 80 GB GPUs or two H200. Activations (eager attention) come on top: keep ~10 % free.
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
# Extra arguments go to every `tje run` as overrides, e.g. `batch_size=8`.
set -euo pipefail
MODELS=(gpt-oss-120b)
MEMORY_ARGS=(gpt-oss-120b --batch 16 --context 16384 --quantization mxfp4)
source "$(dirname "$0")/calibrate_common.sh"
