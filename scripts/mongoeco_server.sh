#!/usr/bin/env bash
# Set up and start mongoeco, a MongoDB wire-protocol server on SQLite (Python >= 3.13),
# used by tests/fireworks/ in place of a real MongoDB.
#
#   scripts/mongoeco_server.sh setup                 # idempotent: make .venv-mongoeco
#   scripts/mongoeco_server.sh start DATA_DIR [PORT] # foreground; PORT 0 = free port
#
# Environment:
#   PYTHON313        interpreter to build the venv from (default: python3.13 on PATH,
#                    else ~/.pyenv/versions/3.13*/bin/python)
#   MONGOECO_VENV    venv location (default: <repo>/.venv-mongoeco)
#   MONGOECO_SPEC    pip requirement (default: mongoeco==4.11.0)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MONGOECO_VENV:-$ROOT/.venv-mongoeco}"
SPEC="${MONGOECO_SPEC:-mongoeco[wire]==4.11.0}"

is_py313() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 13))' >/dev/null 2>&1; }

find_python() {
    if [[ -n "${PYTHON313:-}" ]]; then
        if is_py313 "$PYTHON313"; then echo "$PYTHON313"; return 0; fi
        echo "PYTHON313=$PYTHON313 is not a Python >= 3.13" >&2; return 1
    fi
    for cand in python3.13 python3.14 "$HOME"/.pyenv/versions/3.13*/bin/python "$HOME"/.pyenv/versions/3.14*/bin/python; do
        if command -v "$cand" >/dev/null 2>&1 && is_py313 "$cand"; then
            command -v "$cand"; return 0
        fi
    done
    return 1
}

setup() {
    if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import mongoeco, bson' 2>/dev/null; then
        echo "mongoeco already installed in $VENV"; return 0
    fi
    local py
    if ! py="$(find_python)"; then
        echo "no Python >= 3.13 found (set PYTHON313=...); mongoeco tests will be skipped" >&2
        return 1
    fi
    "$py" -m venv "$VENV" || { echo "could not create $VENV with $py" >&2; return 1; }
    "$VENV/bin/python" -m pip install --quiet --upgrade "$SPEC" || { echo "pip install $SPEC failed" >&2; return 1; }
    "$VENV/bin/python" -c 'import mongoeco; print("mongoeco", mongoeco.__version__, "in", "'"$VENV"'")'
}

case "${1:-}" in
    setup) setup ;;
    start)
        [[ $# -ge 2 ]] || { echo "usage: $0 start DATA_DIR [PORT]" >&2; exit 2; }
        setup >/dev/null
        exec "$VENV/bin/python" "$ROOT/scripts/mongoeco_server.py" --data-dir "$2" --port "${3:-27017}" \
            --port-file "$2/port"
        ;;
    *) echo "usage: $0 {setup|start DATA_DIR [PORT]}" >&2; exit 2 ;;
esac
