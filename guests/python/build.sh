#!/usr/bin/env bash
# Builds the Python steps into components of the wrun:recipe/step world.
#
#   guests/python/build.sh            build every example and fixture
#   guests/python/build.sh test       also run the SDK's unit tests (host CPython)
#   guests/python/build.sh unit       only the unit tests (bindings, no components)
#
# Creates guests/python/.venv with the pinned componentize-py (from PyPI),
# generates the bindings from ../../wit into build/bindings (for editors and
# the unit tests; componentize generates its own copy), and writes one
# component per module to build/<module>.wasm.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
wit="../../wit"
world="step"
out="build"
python="${PYTHON:-python3}"

if [ ! -x .venv/bin/componentize-py ] || ! cmp -s requirements.txt .venv/requirements.txt; then
    "$python" -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
    cp requirements.txt .venv/requirements.txt
fi
cpy=".venv/bin/componentize-py"

mkdir -p "$out"
rm -rf "$out/bindings"
"$cpy" -q -d "$wit" -w "$world" bindings "$out/bindings"

# module name -> directory holding it
components=(
    "fetch_record:examples"
    "hostile:fixtures"
    "noop:fixtures"
)
for entry in "${components[@]}"; do
    [ "${1:-}" = "unit" ] && break
    module="${entry%%:*}"
    dir="${entry#*:}"
    "$cpy" -q -d "$wit" -w "$world" componentize "$module" \
        -p "$dir" -p sdk -o "$out/$module.wasm"
    echo "built $out/$module.wasm ($(wc -c < "$out/$module.wasm") bytes)"
done

if [ "${1:-}" = "test" ] || [ "${1:-}" = "unit" ]; then
    PYTHONPATH="sdk:$out/bindings" "$python" -m unittest discover -s tests -t . -v
fi
