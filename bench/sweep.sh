#!/usr/bin/env bash
# Wall time of one sweep (3 models x 4 optimizers) run sequentially and with the joblib launcher,
# on real data; prints both leaderboards. Usage: MNIST_DATA_ROOT=../shared/data bash bench/sweep.sh [EPOCHS]
set -euo pipefail
epochs=${1:-2}
out=$(mktemp -d)
sweep=(train -m model=mlp,lenet,cnn optimizer=sgd,adam,rmsprop,adagrad epochs="$epochs" device=cpu outputs_dir="$out")
for launcher in basic joblib; do
  extra=()
  [ "$launcher" = joblib ] && extra=(hydra/launcher=joblib hydra.launcher.n_jobs=2)
  start=$(date +%s.%N)
  mnist "${sweep[@]}" "${extra[@]}" > "$out/$launcher.log" 2>&1
  end=$(date +%s.%N)
  echo "$launcher launcher: $(echo "$end - $start" | bc) s wall for 12 jobs ($(nproc) cores, $(date -I))"
done
for board in "$out"/multirun/*/*/leaderboard.csv; do echo "== $board"; cat "$board" | cut -d, -f1-9; done
echo "logs and run folders: $out"
