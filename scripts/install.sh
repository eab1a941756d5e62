#!/usr/bin/env bash
# Installs cooppose and everything it needs on a fresh Debian/Ubuntu machine (CPU torch, headless EGL).
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=()
for pkg in libegl1 libegl-mesa0 libgl1 libgl1-mesa-dri; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
    else
        echo "warning: missing ${need_apt[*]}; the GL renderer falls back to the torch rasterizer" >&2
    fi
fi
python3 -m pip install -q "torch==2.13.0"
python3 -m pip install -q -e ".[dev]"
