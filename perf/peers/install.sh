#!/usr/bin/env bash
# Install the peer serving systems into their own virtual environments under
# perf/peers/.venvs/ (gitignored). Never touches the project's environment.
#   bash perf/peers/install.sh [bentoml] [mosec]     (default: both)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venvs="$here/.venvs"
python="${PYTHON:-python3}"
mkdir -p "$venvs"
peers=("$@")
[ ${#peers[@]} -eq 0 ] && peers=(bentoml mosec)
for peer in "${peers[@]}"; do
  case "$peer" in
    bentoml) pkgs=("bentoml==1.1.11" "numpy<2" "pydantic<2") ;;
    mosec)   pkgs=("mosec" "numpy" "msgspec") ;;
    *) echo "unknown peer '$peer': choose bentoml or mosec" >&2; exit 2 ;;
  esac
  if [ -x "$venvs/$peer/bin/python" ] && [ -f "$venvs/$peer/.installed" ]; then
    echo "$peer: already installed in $venvs/$peer"; continue
  fi
  echo "$peer: creating $venvs/$peer"
  "$python" -m venv "$venvs/$peer"
  "$venvs/$peer/bin/pip" install -q --upgrade pip
  "$venvs/$peer/bin/pip" install -q "${pkgs[@]}"
  "$venvs/$peer/bin/pip" freeze > "$venvs/$peer/.installed"
  echo "$peer: installed"
done
