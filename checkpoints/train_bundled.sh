#!/usr/bin/env bash
# Train the six bundled EDT-T checkpoints with the configs in checkpoints/configs/ and export their
# weights to checkpoints/ (or to $1). Four runs share one GPU: the two from-scratch runs, and the
# two pre-trainings followed by their fine-tunes. On a CPU, run the configs one by one instead.
#
#   CKA_LAB_DATA=/path/to/shared/data bash checkpoints/train_bundled.sh [DEST]
#
# Each run writes runs/<name>/ (train.csv, val.csv, last.pt) and runs/<name>.log. TRAIN_DEADLINE
# (seconds after the start, default: none) stops every run still going then; a stopped run keeps its
# last checkpoint (every 50 iterations), which `python -m cka_lab.train CONFIG --resume` continues.
set -u
cd "$(dirname "$0")/.."
dest=${1:-checkpoints}
deadline=${TRAIN_DEADLINE:-0}
train() {  # config name -> runs/<name>/, log in runs/<name>.log
    mkdir -p runs
    local t0=$SECONDS
    if [ "$deadline" -gt 0 ]; then
        timeout --signal=KILL $((deadline > SECONDS ? deadline - SECONDS : 1)) python3 -m cka_lab.train "checkpoints/configs/$1.toml" >"runs/$1.log" 2>&1
    else
        python3 -m cka_lab.train "checkpoints/configs/$1.toml" >"runs/$1.log" 2>&1
    fi
    echo "$1 exit $? after $((SECONDS - t0)) s" | tee -a runs/walltimes.txt
}
export_run() { [ -f "runs/$1/last.pt" ] && python3 -m cka_lab.train.export "runs/$1/last.pt" "$dest/$1.pt"; }
only=${ONLY:-pretrain finetune scratch}   # e.g. ONLY=finetune: fine-tune the bundled pre-trained weights again
if [[ $only == *scratch* ]]; then train edtt_srx2_scratch & train edtt_dng25_scratch & fi
# a fine-tune starts from checkpoints/<pretrain>.pt (its [finetune] init): export the pre-training first
for pair in "edtt_srx2x3x4_pretrain edtt_srx2_finetune" "edtt_dn_pretrain edtt_dng25_finetune"; do
    set -- $pair
    (if [[ $only == *pretrain* ]]; then
         train "$1" && export_run "$1" && { [ "$dest" = checkpoints ] || cp "$dest/$1.pt" checkpoints/; }
     fi
     if [[ $only == *finetune* ]]; then train "$2"; fi) &
done
wait
for name in edtt_srx2_scratch edtt_dng25_scratch edtt_srx2_finetune edtt_dng25_finetune; do export_run $name; done
