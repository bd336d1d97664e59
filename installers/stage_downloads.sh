#!/usr/bin/env bash
# Lay out what `make package` built as a relay serves it: dist/downloads/ holds
# mini-connector-linux (the one-file binary) and the .deb, the names a connector's
# downloadUrl and install.sh ask for. Serve it with
#   mini-relay serve --downloads-dir dist/downloads   (or MC_RELAY_DOWNLOADS_DIR)
# `make demo` does when the folder exists. A Windows build (made on Windows,
# docs/OPERATIONS.md) goes in beside them as mini-connector-windows.exe.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x dist/mini-connector ] || { echo "stage_downloads: dist/mini-connector is missing: run make package" >&2; exit 3; }
mkdir -p dist/downloads
cp -f dist/mini-connector dist/downloads/mini-connector-linux
for deb in dist/mini-connector_*.deb; do
  [ -e "$deb" ] && cp -f "$deb" dist/downloads/
done
[ -e dist/mini-connector-windows.exe ] && cp -f dist/mini-connector-windows.exe dist/downloads/
ls -1 dist/downloads
