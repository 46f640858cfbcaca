#!/usr/bin/env bash
# Train the six bundled EDT-T checkpoints with the configs in checkpoints/configs/ and export their
# weights to checkpoints/ (or to $1). They are the seed-0 runs of the bundled study paper-cpu (same
# seeds, data, recipe and budget: tests/study/test_spec.py checks it), so
#
#   CKA_LAB_DATA=/path/to/shared/data bash checkpoints/train_bundled.sh [DEST]
#
# trains the same weights as `cka-lab study paper-cpu` does for seed 0. Two chains run at once, one
# thread each (one per core of a 2-core CPU): SR (x2 from scratch, x2/x3/x4 pre-training, x2 fine-tune)
# and DN (sigma 25 from scratch, sigma 15/25/50 pre-training, sigma 25 fine-tune). Each run writes
# runs/<name>/ and runs/<name>.log; an interrupted run continues with
# `python -m cka_lab.train checkpoints/configs/<name>.toml --resume`.
set -u
cd "$(dirname "$0")/.."
dest=${1:-checkpoints}
mkdir -p runs
train() {  # config name -> runs/<name>/, log in runs/<name>.log, export to $dest/<name>.pt
    local t0=$SECONDS
    python3 -m cka_lab.train "checkpoints/configs/$1.toml" >"runs/$1.log" 2>&1 &&
        python3 -m cka_lab.train.export "runs/$1/last.pt" "$dest/$1.pt"
    echo "$1 exit $? after $((SECONDS - t0)) s" | tee -a runs/walltimes.txt
}
# a fine-tune starts from checkpoints/<pretrain>.pt (its [finetune] init): export the pre-training first
chain() {  # scratch pretrain finetune
    train "$1"
    train "$2" && { [ "$dest" = checkpoints ] || cp "$dest/$2.pt" checkpoints/; } && train "$3"
}
chain edtt_srx2_scratch edtt_srx2x3x4_pretrain edtt_srx2_finetune &
chain edtt_dng25_scratch edtt_dn_pretrain edtt_dng25_finetune &
wait
