# Rows of experiments/unrolled_fsdd.sh and experiments/unrolled_start.sh: the simulate
# arguments of each (sourced by both, so that both attack the same captures).
# shellcheck disable=SC2034
declare -A ARGS=(
  [u2]="--local-steps 2 --batch-size 1 --clients 2"
  [u4]="--local-steps 4 --batch-size 1 --clients 2"
  [u8]="--local-steps 8 --batch-size 1 --clients 2"
  [b4x2]="--local-steps 2 --batch-size 4 --clients 1"
  [b4x4]="--local-steps 4 --batch-size 4 --clients 1"
)
