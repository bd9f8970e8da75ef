#!/usr/bin/env bash
# The negative control: meta-llama/Llama-3.3-70B-Instruct (no reasoning post-training; gated on the
# Hub, HF_TOKEN) on AIME 2024, AIME 2025 and GPQA-Diamond with the paper's settings
# (tje_hf/configs/runs/llama-3.3-70b-instruct_*.yaml: 4 refinement steps of at most 8192 new tokens,
# policy "all", temperature 0.7, batch 16, device_map auto), then one report per run and a comparison.
#
# GPU memory (`python -m tje_hf.models.memory llama-3.3-70b --batch 16 --context 16384`, printed
# first; totals include one attention layer's transient):
#   bf16: weights 131.4 GiB + KV cache 80.0 GiB + attention 9.0 GiB + logits 0.1 GiB = 220.5 GiB at
#     16,384 tokens a sequence (prompt + earlier answers, which this family keeps whole, + 8192 new).
#     `tje run` checks the longest conversation, 34,816 tokens: 320.6 GiB, which passes with
#     >= 356.3 GiB free: three H200 or five 80 GB GPUs (device_map auto).
#   model.quantization=4bit: weights 39.8 GiB, but the KV cache is unchanged: 229.0 GiB at 34,816
#     tokens (>= 254.4 GiB free: two H200 or four 80 GB GPUs); on one H200 use batch_size=7
#     (122.5 GiB), on one 80 GB GPU batch_size=2 (63.4 GiB).
#
# Wall time: tokens / throughput. Assumed: ~110 ms a decode step at batch 16 (80 layers; the
# GPUs of device_map auto work one after another) = ~145 tokens/s; assumed mean tokens per step
# (short answers): 1000 on AIME, 700 on GPQA.
#   aime24 / aime25: 30 problems x 4 steps x 1000 / 145 = ~0.25 h each
#   gpqa_diamond:   198 problems x 4 steps x 700 / 145 = ~1.1 h
#   total ~1.5 h; more when some rows ramble to the 8192 cap, since a batch decodes until its
#   longest row stops: at worst ceil(problems / 16) x 4 steps x 8192 steps x 110 ms = ~17 h.
# Runs resume where they stopped: run this script again after an interruption.
#
# Extra arguments go to every `tje run` as overrides, e.g. `model.quantization=4bit batch_size=2`.
set -euo pipefail
MODELS=(llama-3.3-70b-instruct)
MEMORY_ARGS=(llama-3.3-70b --batch 16 --context 16384)
source "$(dirname "$0")/calibrate_common.sh"
