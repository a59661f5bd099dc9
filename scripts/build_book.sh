#!/usr/bin/env bash
# Build the book at a profile: scripts/build_book.sh PROFILE OUTPUT_ROOT   (PYTHON: the venv's interpreter)
# The HTML lands in OUTPUT_ROOT/_build/html (OUTPUT_ROOT "." gives the usual _build/html).
#
# The notebooks read LAMB_PROFILE, so it is set for the build (the kernels inherit it). Execution uses
# jupyter-cache (`execute_notebooks: cache`), which re-runs a notebook only when its code cells change and
# does NOT notice edits to the package (lamb/, lamb/settings/) or to the pinned requirements: this script
# keeps a fingerprint of those beside the cache and clears the cache when it changes, so a rebuild after a
# package edit re-executes every notebook. The package's own caches (tuning.sweep's runs under
# results/cache/, generated data under ~/.cache/lamb) need no clearing: their keys include the fingerprint of the
# source that made them (lamb.fingerprint), so runs of older code are never read. `--all` makes Sphinx re-read
# every page.
set -euo pipefail
profile=${1:?usage: build_book.sh PROFILE OUTPUT_ROOT}
root=${2:?usage: build_book.sh PROFILE OUTPUT_ROOT}
python=${PYTHON:-.venv/bin/python}
cd "$(dirname "$0")/.."
build="$root/_build"

fingerprint=$( { echo "profile=$profile"; cat requirements.txt;
                 find lamb -type f \( -name '*.py' -o -name '*.toml' -o -name '*.json' \) -print0 | sort -z |
                 xargs -0 sha256sum; } | sha256sum | cut -d' ' -f1 )
stamp="$build/.lamb-fingerprint"
if [[ ! -f $stamp || $(cat "$stamp") != "$fingerprint" ]]; then
  echo "package, requirements or profile changed since the last build in $build: clearing its execution cache"
  rm -rf "$build/.jupyter_cache" "$build/jupyter_execute"
fi
# The cache now matches this fingerprint, whether or not the build below succeeds.
mkdir -p "$build"
echo "$fingerprint" > "$stamp"

rm -f "$build/html/index.html"     # so that a build that writes nothing cannot pass on an old index.html
start=$(date +%s)
LAMB_PROFILE=$profile "$(dirname "$python")/jupyter-book" build . --path-output "$root" -W -n --keep-going --all
end=$(date +%s)
if [[ ! -f $build/html/index.html ]]; then
  echo "FAILED: the build wrote no $build/html/index.html" >&2
  exit 1
fi
echo "book built at profile $profile in $((end - start)) s: $build/html/index.html"
