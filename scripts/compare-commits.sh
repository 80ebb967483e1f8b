#!/usr/bin/env bash
# Run the quantreg suite on two commits of this repository, on this machine, and gate with
# `quantreg compare`: exit 0 when nothing regressed, 1 on a regression, 2 on bad input.
#   usage: scripts/compare-commits.sh [--rounds N] BASE HEAD [pytest arguments...]
#   --rounds N            run base and head N times each, alternating (base, head, base, head, ...),
#                         so that compare measures how much latency moves between runs (default: 1)
#   QUANTREG_PYTHON       the Python with pytest-quantreg installed (default: .venv/bin/python)
#   QUANTREG_COMPARE_DIR  where base-K.json, head-K.json, compare.md and compare.json go (default: quantreg-compare)
#   QUANTREG_FAIL_ON      space-separated METRIC=N thresholds for quantreg compare (default: its own)
# Both commits run with the same installed pytest-quantreg, in git worktrees of this repository.
set -uo pipefail
rounds=1
if [ "${1:-}" = "--rounds" ]; then
    rounds=${2:-}
    shift 2 || true
fi
if ! [[ $rounds =~ ^[1-9][0-9]*$ ]] || [ $# -lt 2 ]; then
    echo "usage: $0 [--rounds N] BASE HEAD [pytest arguments...]  (N a whole number, 1 or more)" >&2
    exit 2
fi
base=$1 head=$2
shift 2
python=${QUANTREG_PYTHON:-.venv/bin/python}
[[ $python = /* ]] || python=$PWD/$python  # absolute, not resolved: a venv's python is a symlink
out=${QUANTREG_COMPARE_DIR:-quantreg-compare}
mkdir -p "$out" && out=$(realpath "$out")
rm -f "$out"/base*.json "$out"/head*.json
for side in base head; do
    tree="$out/$side-tree"
    git worktree remove --force "$tree" 2>/dev/null
    git worktree add --detach --force "$tree" "${!side}" >/dev/null || exit 2
done
runs=(base head)
for ((round = 1; round <= rounds; round++)); do
    for side in "${runs[@]}"; do
        (cd "$out/$side-tree" && "$python" -m pytest "$@" --benchmark-json="$out/$side-$round.json")
        echo "pytest on $side (${!side}), round $round of $rounds, exited with $?" >&2
    done
done
for side in base head; do git worktree remove --force "$out/$side-tree"; done
list() { local files=(); for ((round = 1; round <= rounds; round++)); do files+=("$out/$1-$round.json"); done; (IFS=,; echo "${files[*]}"); }
fail_on=()
for threshold in ${QUANTREG_FAIL_ON:-}; do fail_on+=(--fail-on "$threshold"); done
compare=("$python" -m pytest_quantreg compare "$(list base)" "$(list head)" "${fail_on[@]}")
"${compare[@]}" --json > "$out/compare.json"
"${compare[@]}" --markdown > "$out/compare.md"
"${compare[@]}"
