#!/usr/bin/env bash
# Train the six bundled EDT-T checkpoints with the configs in checkpoints/configs/ and export their
# weights to checkpoints/ (or to $1):
#
#   CKA_LAB_DATA=/path/to/shared/data bash checkpoints/train_bundled.sh [DEST]
#
# Two chains run at once, one thread each (one per core of a 2-core CPU): SR (x2 from scratch, 2000
# iterations; x2/x3/x4 pre-training, 400; x2 fine-tune, 2000) and DN (sigma 25 from scratch; sigma
# 15/25/50 pre-training; sigma 25 fine-tune). The scratch configs are the recipe runs sr_B / dn_B of the
# README's recipe table, the pre-trainings the seed-0 pre-trainings of the bundled study paper-cpu
# (tests/study/test_spec.py checks it). Each run writes runs/<name>/ and runs/<name>.log; an interrupted
# run continues with `python -m cka_lab.train checkpoints/configs/<name>.toml --resume`.
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
