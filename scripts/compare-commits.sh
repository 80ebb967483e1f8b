#!/usr/bin/env bash
# Run the quantreg suite on two commits of this repository, on this machine, and gate with
# `quantreg compare`: exit 0 when nothing regressed, 1 on a regression, 2 on bad input.
#   usage: scripts/compare-commits.sh BASE HEAD [pytest arguments...]
#   QUANTREG_PYTHON       the Python with pytest-quantreg installed (default: .venv/bin/python)
#   QUANTREG_COMPARE_DIR  where base.json, head.json, compare.md and compare.json go (default: quantreg-compare)
#   QUANTREG_FAIL_ON      space-separated METRIC=N thresholds for quantreg compare (default: its own)
# Both commits run with the same installed pytest-quantreg, in git worktrees of this repository.
set -uo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 BASE HEAD [pytest arguments...]" >&2
    exit 2
fi
base=$1 head=$2
shift 2
python=${QUANTREG_PYTHON:-.venv/bin/python}
[[ $python = /* ]] || python=$PWD/$python  # absolute, not resolved: a venv's python is a symlink
out=${QUANTREG_COMPARE_DIR:-quantreg-compare}
mkdir -p "$out" && out=$(realpath "$out")
rm -f "$out/base.json" "$out/head.json"
for side in base head; do
    ref=${!side}
    tree="$out/$side-tree"
    git worktree remove --force "$tree" 2>/dev/null
    git worktree add --detach --force "$tree" "$ref" >/dev/null || exit 2
    (cd "$tree" && "$python" -m pytest "$@" --benchmark-json="$out/$side.json")
    echo "pytest on $side ($ref) exited with $?" >&2
    git worktree remove --force "$tree"
done
fail_on=()
for threshold in ${QUANTREG_FAIL_ON:-}; do fail_on+=(--fail-on "$threshold"); done
"$python" -m pytest_quantreg compare "$out/base.json" "$out/head.json" "${fail_on[@]}" --json > "$out/compare.json"
"$python" -m pytest_quantreg compare "$out/base.json" "$out/head.json" "${fail_on[@]}" --markdown > "$out/compare.md"
"$python" -m pytest_quantreg compare "$out/base.json" "$out/head.json" "${fail_on[@]}"
