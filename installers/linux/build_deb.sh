#!/usr/bin/env bash
# Build dist/mini-connector_<version>_<arch>.deb from dist/mini-connector with dpkg-deb.
# Contents: /usr/bin/mini-connector, /lib/systemd/system/mini-connector.service (the unit
# from agent.admin.service.unit_text for the packaged paths), the operations guide, and the
# maintainer scripts in installers/linux/debian/ (service user, 0700 /etc/mini-connector,
# stop/disable on removal, user and config removed on purge).
# Usage: installers/linux/build_deb.sh [PYTHON]   (run build_binary.sh first)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${1:-.venv/bin/python}"
BIN=dist/mini-connector
[ -x "$BIN" ] || { echo "build_deb: $BIN is missing: run installers/linux/build_binary.sh first" >&2; exit 1; }
VERSION="$("$BIN" --version | awk '{print $2}')"
ARCH="$(dpkg --print-architecture)"
ROOT="build/deb/mini-connector_${VERSION}_${ARCH}"
rm -rf "$ROOT"
install -d -m 0755 "$ROOT/DEBIAN" "$ROOT/usr/bin" "$ROOT/lib/systemd/system" \
  "$ROOT/usr/share/doc/mini-connector"
install -m 0755 "$BIN" "$ROOT/usr/bin/mini-connector"
"$PY" -c 'import sys; from agent.admin.service import unit_text
sys.stdout.write(unit_text(exec_path="/usr/bin/mini-connector", config_path="/etc/mini-connector/agent.toml"))' \
  > "$ROOT/lib/systemd/system/mini-connector.service"
chmod 0644 "$ROOT/lib/systemd/system/mini-connector.service"
install -m 0644 docs/OPERATIONS.md "$ROOT/usr/share/doc/mini-connector/OPERATIONS.md"
for s in postinst prerm postrm; do install -m 0755 "installers/linux/debian/$s" "$ROOT/DEBIAN/$s"; done
SIZE_KB="$(du -sk "$ROOT" | cut -f1)"
cat > "$ROOT/DEBIAN/control" <<CONTROL
Package: mini-connector
Version: ${VERSION}
Architecture: ${ARCH}
Maintainer: Mini Connector team <support@mini-connector.invalid>
Installed-Size: ${SIZE_KB}
Depends: passwd
Section: net
Priority: optional
Description: Mini Connector agent
 The on-premise agent of Mini Connector: holds one outbound WebSocket to the
 relay and runs read-only jobs against the databases its admin configured.
 Configure it with 'mini-connector configure' as the mini-connector user.
CONTROL
OUT="dist/mini-connector_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$OUT" >/dev/null
echo "$OUT"
