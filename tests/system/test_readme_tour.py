"""The README's tour, run exactly as written (issue 16): its ```bash blocks, in order, in
one bash with ``-euo pipefail``, from the top of the checkout. It must end with exit 0,
print the job's rows, and leave the source tree as it found it (all state in one
temporary folder, removed by the tour's last step)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.harness import free_port

ROOT = Path(__file__).resolve().parents[2]


def tour_blocks(readme: str) -> list[str]:
    section = readme.split("## A five-minute tour", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, re.S)


SKIP_DIRS = {".git", ".venv", "__pycache__", ".hypothesis", ".pytest_cache", ".ruff_cache", "build", "dist"}


def _written_since(t0: float) -> list[str]:
    """Files in the checkout created or changed since ``t0`` (caches and builds aside)."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in files:
            path = Path(folder, name)
            if path.stat().st_mtime >= t0:
                found.append(str(path.relative_to(ROOT)))
    return found


def test_the_tour_runs_as_pasted_and_leaves_the_tree_clean(tmp_path: Path) -> None:
    blocks = tour_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 8 and all("```" not in b for b in blocks)
    script = "\n".join(blocks)
    t0 = time.time() - 0.01
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",  # the tour prepends .venv/bin
        "HOME": str(tmp_path), "TMPDIR": str(tmp_path), "LANG": "C.UTF-8",
        "MC_TOUR_PORT": str(free_port()),
    }  # fmt: skip
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180, check=False)  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert '"status":"healthy"' in done.stdout.replace(" ", "") or "healthy" in done.stdout, out[-2000:]
    assert "state:          connected" in done.stdout, out[-2000:]
    assert f"127.0.0.1:{env['MC_TOUR_PORT']}/console#token=ey" in done.stdout, out[-2000:]  # step 8's link
    assert '{"id":1,"name":"Ada","balance":120.5}' in done.stdout, out[-2000:]
    assert '{"id":2,"name":"Grace","balance":80.0}' in done.stdout and "Linus" not in done.stdout
    # Every sample output the README shows (a "# {...}" line under a command) is printed.
    samples = [line[2:] for b in blocks for line in b.splitlines() if line.startswith("# {")]
    assert samples and [x for x in samples if x not in done.stdout] == [], out[-2000:]
    assert _written_since(t0) == [], "the tour wrote into the source tree"
    assert not list(tmp_path.glob("mini-connector-tour.*")), "the tour's clean-up left its folder"
    assert not os.environ.get("MC_TOUR_PORT")  # the test's port never leaks into this process
