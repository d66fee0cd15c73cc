"""`plugin-operator run` with a bad setting stops at once, naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys


def test_a_bad_setting_stops_the_operator_before_it_starts() -> None:
    env = {**os.environ, "DRIFT_SWEEP_INTERVAL": "hourly", "KUBECONFIG": "/nonexistent"}
    done = subprocess.run(
        [sys.executable, "-m", "plugin_operator", "run"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "configuration error: DRIFT_SWEEP_INTERVAL='hourly': expected a duration" in done.stderr
