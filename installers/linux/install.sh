#!/usr/bin/env bash
# One-line install of the Mini Connector agent on Linux (run as root):
#
#   sudo ./install.sh --api-key vmc_... --relay-url wss://relay.example.com [--name NAME]
#        [--deb FILE | --binary FILE] [--user NAME] [--allow-insecure] [--dry-run]
#
# Installs the .deb (dpkg -i) when one is given or lies beside this script or in dist/,
# else the one-file binary to /usr/local/bin (with neither, it downloads one from the
# relay's /downloads and checks its SHA-256: exit 5 on a mismatch); creates the service
# user and a 0700 /etc/mini-connector; runs 'mini-connector configure' AS the service user (so the
# config, secret.key and the key pair belong to it); then 'mini-connector service
# install', which writes the hardened systemd unit and starts the agent. --dry-run prints
# every step and changes nothing. The API key is never printed.
set -euo pipefail

API_KEY="" RELAY_URL="" NAME="" DEB="" BINARY="" SVC_USER="mini-connector"
DRY_RUN=0 INSECURE=0
STATE=/etc/mini-connector
HERE="$(cd "$(dirname "$0")" && pwd)"

# die MESSAGE [EXIT_CODE]: one line on stderr (the message only), then exit.
die() { echo "install.sh: $1" >&2; exit "${2:-1}"; }
# usage [EXIT_CODE]: the header above; 0 when asked for (--help).
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --api-key) API_KEY="${2:-}"; shift 2 ;;
    --relay-url) RELAY_URL="${2:-}"; shift 2 ;;
    --name) NAME="${2:-}"; shift 2 ;;
    --deb) DEB="${2:-}"; shift 2 ;;
    --binary) BINARY="${2:-}"; shift 2 ;;
    --user) SVC_USER="${2:-}"; shift 2 ;;
    --allow-insecure) INSECURE=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage ;;
    *) die "unknown option $1 (see --help)" 2 ;;
  esac
done
[ -n "$API_KEY" ] || die "--api-key is required (the key shown when the connector was created)" 2
[ -n "$RELAY_URL" ] || die "--relay-url is required (for example wss://relay.example.com)" 2
case "$API_KEY" in vmc_*) ;; *) die "the API key must start with 'vmc_'" 2 ;; esac

# What to install: an explicit file, else a .deb or binary beside this script or in dist/.
if [ -z "$DEB" ] && [ -z "$BINARY" ]; then
  for d in "$HERE" "$HERE/../../dist" "$PWD" "$PWD/dist"; do
    f="$(ls -1 "$d"/mini-connector_*.deb 2>/dev/null | sort -V | tail -1 || true)"
    if [ -n "$f" ] && command -v dpkg >/dev/null 2>&1; then DEB="$f"; break; fi
    if [ -x "$d/mini-connector" ] && [ -f "$d/mini-connector" ]; then BINARY="$d/mini-connector"; break; fi
  done
fi
# Nothing local: download from the relay's /downloads (the .deb for this architecture if
# dpkg is here, else the binary) and check it against the relay's SHA256SUMS.
if [ -z "$DEB" ] && [ -z "$BINARY" ]; then
  base="$(printf '%s' "$RELAY_URL" | sed -e 's#^wss://#https://#' -e 's#^ws://#http://#' -e 's#/*$##')"
  fetch() {
    if command -v curl >/dev/null 2>&1; then curl -fsSL --proto '=https,http' -o "$2" "$1"
    else wget -q -O "$2" "$1"; fi
  }
  TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
  fetch "$base/downloads/SHA256SUMS" "$TMP/SHA256SUMS" || die "no mini-connector .deb or binary found here, and $base/downloads/SHA256SUMS cannot be fetched: pass --deb FILE or --binary FILE" 3
  name="" arch="$(dpkg --print-architecture 2>/dev/null || true)"
  [ -n "$arch" ] && name="$(awk -v a="_${arch}.deb" '$2 ~ /^mini-connector_/ && substr($2, length($2) - length(a) + 1) == a {print $2}' "$TMP/SHA256SUMS" | sort -V | tail -1)"
  [ -n "$name" ] || name="$(awk '$2 == "mini-connector-linux" {print $2}' "$TMP/SHA256SUMS")"
  [ -n "$name" ] || die "the relay at $base offers no Linux build of mini-connector (see its /downloads/SHA256SUMS)" 3
  echo "downloading $base/downloads/$name"
  fetch "$base/downloads/$name" "$TMP/$name" || die "cannot download $base/downloads/$name" 3
  (cd "$TMP" && awk -v n="$name" '$2 == n' SHA256SUMS | sha256sum -c --status -) || \
    die "the SHA-256 of the downloaded $name does not match the relay's SHA256SUMS: not installing it" 5
  echo "checksum OK: $name"
  case "$name" in *.deb) DEB="$TMP/$name" ;; *) chmod 0755 "$TMP/$name"; BINARY="$TMP/$name" ;; esac
fi
[ -n "$DEB" ] || [ -n "$BINARY" ] || die "no mini-connector .deb or binary found: pass --deb FILE or --binary FILE" 3

if [ -n "$DEB" ]; then EXE=/usr/bin/mini-connector; else EXE=/usr/local/bin/mini-connector; fi
CONFIG="$STATE/agent.toml"
shown_key="${API_KEY:0:12}…"

run() {  # run a step, or print it under --dry-run; $SHOW is the printable form
  local show="${SHOW:-$*}"
  if [ "$DRY_RUN" = 1 ]; then echo "would run: $show"; else echo "+ $show"; "$@"; fi
  SHOW=""
}

[ "$DRY_RUN" = 1 ] || [ "$(id -u)" = 0 ] || die "run this as root (sudo), or add --dry-run to see the steps" 4

if [ -n "$DEB" ]; then
  run dpkg -i "$DEB"
else
  run install -m 0755 "$BINARY" "$EXE"
  if ! getent passwd "$SVC_USER" >/dev/null; then
    run useradd --system --user-group --no-create-home --home-dir "$STATE" --shell /usr/sbin/nologin "$SVC_USER"
  fi
fi
if [ "$SVC_USER" != mini-connector ] && ! getent passwd "$SVC_USER" >/dev/null; then
  run useradd --system --user-group --no-create-home --home-dir "$STATE" --shell /usr/sbin/nologin "$SVC_USER"
fi
run install -d -m 0700 -o "$SVC_USER" -g "$SVC_USER" "$STATE"

args=(--config "$CONFIG" configure --relay-url "$RELAY_URL" --api-key "$API_KEY")
shown_args=(--config "$CONFIG" configure --relay-url "$RELAY_URL" --api-key "$shown_key")
[ -n "$NAME" ] && { args+=(--name "$NAME"); shown_args+=(--name "$NAME"); }
[ "$INSECURE" = 1 ] && { args+=(--allow-insecure); shown_args+=(--allow-insecure); }
SHOW="runuser -u $SVC_USER -- $EXE ${shown_args[*]}" run runuser -u "$SVC_USER" -- "$EXE" "${args[@]}"

set +e
SHOW="$EXE --config $CONFIG service install --user $SVC_USER" \
  run "$EXE" --config "$CONFIG" service install --user "$SVC_USER"
rc=$?
set -e
if [ "$DRY_RUN" = 1 ]; then
  echo "would run: $EXE --config $CONFIG diagnose"
  exit 0
fi
case "$rc" in
  0) echo "the agent is installed and running; check it with: $EXE --config $CONFIG status" ;;
  12) echo "the agent is installed and configured, but systemd is not running here, so it was not started:" \
           "run '$EXE --config $CONFIG run' as $SVC_USER under your own supervisor" >&2; exit 12 ;;
  *) die "'mini-connector service install' failed (exit $rc): see the message above" "$rc" ;;
esac
runuser -u "$SVC_USER" -- "$EXE" --config "$CONFIG" diagnose || \
  echo "install.sh: diagnose found a problem: fix the line marked FAIL above" >&2
