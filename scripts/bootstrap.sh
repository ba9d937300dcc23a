#!/usr/bin/env bash
# System packages the project needs on Debian/Ubuntu, installed when missing (as root).
# Python packages are installed by the Makefile into .venv.
set -euo pipefail
PYTHON=${PYTHON:-python3}
need=()
"$PYTHON" -c "import venv, ensurepip" 2>/dev/null || need+=(python3-venv)
# Real data for the built-in tasks (optional: without it the loaders say how to get it).
want=()
[ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || want+=(dataset-fashion-mnist)
# The browser test of `ardiff serve` (make test-slow) drives Debian's Chromium.
if [ "${WANT_BROWSER:-0}" = 1 ] && ! command -v chromium >/dev/null; then want+=(chromium); fi
if [ ${#need[@]} -gt 0 ] || [ ${#want[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq || true
        [ ${#need[@]} -eq 0 ] || apt-get install -y -qq "${need[@]}"
        [ ${#want[@]} -eq 0 ] || apt-get install -y -qq "${want[@]}" \
            || echo "note: could not install ${want[*]}; the tests that need them will be skipped" >&2
    elif [ ${#need[@]} -gt 0 ]; then
        echo "missing system packages: ${need[*]} (install them with apt-get as root)" >&2
        exit 1
    else
        echo "note: run as root to install ${want[*]}; the tests that need them will be skipped" >&2
    fi
fi
