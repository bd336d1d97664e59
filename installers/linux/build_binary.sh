#!/usr/bin/env bash
# Build the one-file `mini-connector` binary into dist/ with PyInstaller.
# Usage: installers/linux/build_binary.sh [PYTHON]   (default .venv/bin/python, which
# needs the `package` extra: pip install -e '.[package]'; `make package` does it).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${1:-.venv/bin/python}"
"$PY" -m PyInstaller --noconfirm --clean --log-level WARN \
  --distpath dist --workpath build/pyinstaller installers/mini-connector.spec
./dist/mini-connector --version
