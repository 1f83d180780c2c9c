#!/usr/bin/env bash
# Install the peer serving systems into their own virtual environments under
# perf/peers/.venvs/ (gitignored). Never touches the project's environment.
#   bash perf/peers/install.sh [bentoml] [mosec] [pytriton]     (default: bentoml and mosec)
# pytriton (Triton 2.51 through PyTriton 0.7, for perf/bench_v2.py) gets a venv made from
# /usr/bin/python3.11: Triton's Python backend stub links that system libpython, and a model
# served from another interpreter fails to load.
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
    pytriton) pkgs=("nvidia-pytriton==0.7.*" "numpy<2") ;;
    *) echo "unknown peer '$peer': choose bentoml, mosec or pytriton" >&2; exit 2 ;;
  esac
  if [ -x "$venvs/$peer/bin/python" ] && [ -f "$venvs/$peer/.installed" ]; then
    echo "$peer: already installed in $venvs/$peer"; continue
  fi
  echo "$peer: creating $venvs/$peer"
  peer_python="$python"
  if [ "$peer" = pytriton ]; then
    peer_python="${PYTRITON_PYTHON:-/usr/bin/python3.11}"
    [ -x "$peer_python" ] || { echo "pytriton needs $peer_python (the python3.11 whose libpython Triton's stub links)" >&2; exit 2; }
  fi
  "$peer_python" -m venv "$venvs/$peer"
  "$venvs/$peer/bin/pip" install -q --upgrade pip
  "$venvs/$peer/bin/pip" install -q "${pkgs[@]}"
  "$venvs/$peer/bin/pip" freeze > "$venvs/$peer/.installed"
  echo "$peer: installed"
done
