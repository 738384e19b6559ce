#!/usr/bin/env bash
# hparams_search=optuna on real MNIST, cnn, 2 epochs per trial, 20 trials, sampler seed 0: with the
# median pruner, without pruning, and the pruned search as 2 workers (two processes, one thread each)
# on one study. Prints a Markdown table. Usage: MNIST_DATA_ROOT=../shared/data bash bench/optuna_search.sh
set -euo pipefail
out=$(mktemp -d)
common=(train hparams_search=optuna epochs=2 device=cpu outputs_dir="$out" hydra.sweeper.n_trials=20
        hydra.sweeper.warmup_epochs=0)   # 2-epoch trials: pruning can only act after epoch 1
run() {  # name, extra overrides...
  local name=$1; shift
  local start end
  start=$(date +%s.%N)
  "$@" > "$out/$name.log" 2>&1
  end=$(date +%s.%N)
  echo "$name $(echo "$end - $start" | bc)" >> "$out/walls.txt"
}
run pruned mnist "${common[@]}" hydra.sweeper.study_name=pruned
run unpruned mnist "${common[@]}" hydra.sweeper.study_name=unpruned hydra.sweeper.pruner=none
run two_workers bash -c "mnist ${common[*]} hydra.sweeper.study_name=two threads=1 & mnist ${common[*]} hydra.sweeper.study_name=two threads=1 & wait"
python - "$out" <<'PY'
import sys, optuna
from pathlib import Path
out = Path(sys.argv[1])
walls = dict(line.split() for line in (out / "walls.txt").read_text().splitlines())
print(f"| search (20 trials, cnn, 2 epochs each) | wall time | best val accuracy | complete / pruned | epochs trained |")
print("|---|---:|---:|---:|---:|")
for run, study_name, label in (("unpruned", "unpruned", "no pruning"), ("pruned", "pruned", "median pruner"),
                               ("two_workers", "two", "median pruner, 2 workers on one study")):
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{out}/optuna/{study_name}.db")
    states = [t.state.name for t in study.trials]
    epochs = sum(len(t.intermediate_values) for t in study.trials)
    print(f"| {label} | {float(walls[run]) / 60:.1f} min | {study.best_value:.2%} | "
          f"{states.count('COMPLETE')} / {states.count('PRUNED')} | {epochs} |")
PY
echo "machine: $(nproc) cores, $(python -c 'import torch, optuna; print(f"torch {torch.__version__}, optuna {optuna.__version__}")'), $(date -I); logs: $out"
