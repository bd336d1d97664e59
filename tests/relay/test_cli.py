"""The mini-relay command: serve prints one line, stops on SIGTERM; token prints a token."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import jwt

from relay.config import DEV_JWT_SECRET


def _env(tmp_path: object, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MC_RELAY_")}
    env.update(extra)
    return env


def test_token_prints_only_a_signed_token(tmp_path: object) -> None:
    """`mini-relay token` prints one JWT with the tenant and role asked for."""
    out = subprocess.run([sys.executable, "-m", "relay.cli", "token", "--tenant", "acme", "--role", "service"],
                         env=_env(tmp_path, MC_RELAY_JWT_SECRET="s" * 40), capture_output=True, text=True,
                         check=True)
    token = out.stdout.strip()
    assert "\n" not in token
    claims = jwt.decode(token, "s" * 40, algorithms=["HS256"])
    assert claims["tenantId"] == "acme" and claims["role"] == "service" and claims["jti"]


def test_serve_without_secret_is_a_clear_error(tmp_path: object) -> None:
    """Without MC_RELAY_JWT_SECRET outside --dev: one sentence on stderr, exit code 2."""
    out = subprocess.run([sys.executable, "-m", "relay.cli", "serve", "--port", "0",
                          "--database-url", f"sqlite:///{tmp_path}/r.db"],
                         env=_env(tmp_path), capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "MC_RELAY_JWT_SECRET" in out.stderr and "Traceback" not in out.stderr


def test_serve_dev_listens_accepts_dev_tokens_and_stops_on_sigterm(tmp_path: object) -> None:
    """--dev --port 0 prints one listening line with the real port; SIGTERM exits 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "serve", "--dev", "--port", "0",
         "--database-url", f"sqlite:///{tmp_path}/r.db"],
        env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("mini-relay 0.1.0 listening on http://127.0.0.1:"), line
        base = line.rsplit(" ", 1)[1]
        token = subprocess.run([sys.executable, "-m", "relay.cli", "token", "--dev", "--tenant", "t",
                                "--role", "admin"], env=_env(tmp_path), capture_output=True, text=True,
                               check=True).stdout.strip()
        jwt.decode(token, DEV_JWT_SECRET, algorithms=["HS256"])
        req = urllib.request.Request(base + "/api/v1/connectors",
                                     headers={"Authorization": f"Bearer {token}", "X-Tenant-ID": "t"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.returncode == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
