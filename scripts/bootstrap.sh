#!/usr/bin/env bash
# System packages the project needs on Debian/Ubuntu, installed when missing (as root).
# Python packages are installed by the Makefile into .venv.
set -euo pipefail
PYTHON=${PYTHON:-python3}
need=()
"$PYTHON" -c "import venv, ensurepip" 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq "${need[@]}"
    else
        echo "missing system packages: ${need[*]} (install them with apt-get as root)" >&2
        exit 1
    fi
fi
