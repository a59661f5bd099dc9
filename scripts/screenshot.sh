#!/usr/bin/env bash
# Screenshots of built pages in headless Chromium, offline, and a check that MathJax typeset the math.
#
#   scripts/screenshot.sh [HTML_DIR] [PAGE...]     e.g. scripts/screenshot.sh _build/html book/04_lamb
#
# HTML_DIR defaults to _build/html; PAGEs (paths under it, without .html) default to the notation page and
# every chapter. Writes HTML_DIR/../screenshots/<page>.png (1200x1600 by default; WIDTH, HEIGHT) and prints,
# per page, how many formulas MathJax rendered, how many were left as raw TeX and how many figures the
# page holds. Exits non-zero if a page has math left untypeset. Needs Chromium (Debian: `apt-get install
# chromium`); the book build itself does not.
set -euo pipefail
html=${1:-_build/html}
shift || true
pages=("$@")
if (( ${#pages[@]} == 0 )); then
  pages=(book/notation)
  for f in "$html"/book/0*.html "$html"/notebooks/*.html; do [[ -f $f ]] && pages+=("${f#"$html"/}"); done
fi
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[[ -n $browser ]] || { echo "no chromium found: apt-get install -y chromium" >&2; exit 2; }
out="$(dirname "$html")/screenshots"
mkdir -p "$out"
flags=(--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update
       --disable-sync --no-first-run --hide-scrollbars --virtual-time-budget="${BUDGET_MS:-15000}")
status=0
printf '%-45s %8s %8s %8s\n' page rendered raw_tex figures
for page in "${pages[@]}"; do
  page=${page%.html}
  file=$(realpath "$html/$page.html")
  profile=$(mktemp -d)
  "$browser" "${flags[@]}" --user-data-dir="$profile" --window-size="${WIDTH:-1200},${HEIGHT:-1600}" \
      --screenshot="$out/${page//\//_}.png" "file://$file" > /dev/null 2>&1
  dom=$("$browser" "${flags[@]}" --user-data-dir="$profile" --dump-dom "file://$file" 2> /dev/null)
  rm -rf "$profile"
  rendered=$(grep -o '<mjx-container' <<< "$dom" | wc -l || true)
  # Sphinx writes inline math as \( ... \) and display math as \[ ... \] inside span/div.math; MathJax
  # replaces them, so any left means MathJax did not run (or did not load from the book's own files).
  raw=$(grep -oE 'class="math notranslate nohighlight">\s*\\[([]' <<< "$dom" | wc -l || true)
  figures=$(grep -oE '<img [^>]*src="[^"]*\.(png|svg|jpg)"' <<< "$dom" | wc -l || true)
  printf '%-45s %8d %8d %8d\n' "$page" "$rendered" "$raw" "$figures"
  (( raw == 0 )) || status=1
done
echo "screenshots in $out"
exit $status
