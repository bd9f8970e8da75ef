# Shared body of scripts/calibrate_*.sh: source it after setting
#   MODELS=(model config names in tje_hf/configs/models/)   MEMORY_ARGS=(arguments of `python -m tje_hf.models.memory`)
# It prints the memory estimate, runs every model on AIME 2024, AIME 2025 and GPQA Diamond
# (resuming finished problems), writes each run's report and one comparison of all runs.
# Extra script arguments go to every `tje run` as overrides; TJE_RUN replaces `tje run`, e.g.
# TJE_RUN="accelerate launch --multi_gpu --num_processes 4 -m tje_hf.cli run".
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TJE=${TJE:-$(command -v tje || echo .venv/bin/tje)}
PY=${PY:-$(test -x .venv/bin/python && echo .venv/bin/python || echo python3)}
read -r -a RUN <<< "${TJE_RUN:-$TJE run}"
TASKS=(aime24 aime25 gpqa_diamond)

"$PY" -m tje_hf.models.memory "${MEMORY_ARGS[@]}"
run_dirs=()
for model in "${MODELS[@]}"; do
    for task in "${TASKS[@]}"; do
        "${RUN[@]}" --config "${model}_${task}" "$@"
        run_dirs+=("runs/${model}_${task}")
    done
done
for dir in "${run_dirs[@]}"; do
    "$TJE" report "$dir"
done
"$TJE" compare "${run_dirs[@]}" --out "runs/compare_${MODELS[0]}"
