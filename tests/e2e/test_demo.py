"""`axiom demo` is the README's main job on the embedded default: it must run to the end and pass its own checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_runs_every_scenario_and_passes_its_checks(tmp_path):
    env = {**os.environ, "AXIOM_DATA_DIR": str(tmp_path), "COLUMNS": "120"}
    env.pop("DATABASE_URL", None)
    proc = subprocess.run([sys.executable, "-m", "services.cli.main", "demo"], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Demo complete" in proc.stdout and "✗" not in proc.stdout
    assert proc.stdout.count("✓") == 8
    assert (tmp_path / "axiom.db").exists()
