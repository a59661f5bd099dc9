#!/usr/bin/env bash
# What `make test` (and CI, .ci/run) runs, in three steps that all run even when one fails:
#   1. the unit tests (tests/, pytest-xdist with JOBS workers),
#   2. every notebook of book/ and notebooks/ at the smoke profile with nbval (--nbval-lax: each notebook
#      in a fresh kernel, failing on any error or failed assert; outputs are not compared),
#   3. a book build at the smoke profile with Sphinx warnings as errors into SMOKE_BUILD_DIR.
# Exits non-zero when any step failed, after a summary of each step's status and time.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
jobs=${JOBS:-2}
smoke_root=${SMOKE_BUILD_DIR:-_build_smoke}
summary=()
failed=0

step() {  # step NAME COMMAND...
  local name=$1; shift
  echo; echo "=== $name: $*"
  local start=$(date +%s)
  "$@"
  local status=$?
  local seconds=$(( $(date +%s) - start ))
  if (( status == 0 )); then summary+=("PASS  $name (${seconds} s)"); else summary+=("FAIL  $name (exit $status, ${seconds} s)"); failed=1; fi
}

notebooks=()
for d in book notebooks; do [[ -d $d ]] && compgen -G "$d/*.ipynb" > /dev/null && notebooks+=("$d"); done

step "unit tests" "$python" -m pytest -n "$jobs" -p no:cacheprovider tests
if (( ${#notebooks[@]} )); then
  step "notebooks at smoke (nbval)" env LAMB_PROFILE=smoke "$python" -m pytest --nbval-lax --nbval-current-env \
       -p no:cacheprovider "${notebooks[@]}"
else
  summary+=("FAIL  notebooks: no .ipynb in book/ or notebooks/"); failed=1
fi
step "book build at smoke (-W)" env PYTHON="$python" scripts/build_book.sh smoke "$smoke_root"

echo; echo "=== summary"
printf '%s\n' "${summary[@]}"
exit $failed
