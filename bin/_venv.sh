# Sourced by bin/run and bin/test: make sure .venv exists and has the project installed with $1 extras.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extras=${1:-}
python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
  done
fi
if [ ! -x .venv/bin/python ]; then
  echo "esaroutes: creating .venv with $python"
  "$python" -m venv .venv
fi
stamp=.venv/.installed${extras:+-$extras}
fresh() { [ -f "$1" ] && [ ! pyproject.toml -nt "$1" ]; }
# The dev install includes the plain one: bin/run after bin/test installs nothing.
if ! fresh "$stamp" && ! { [ -z "$extras" ] && fresh .venv/.installed-dev; }; then
  echo "esaroutes: installing the project into .venv"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".${extras:+[$extras]}"
  touch "$stamp"
fi
