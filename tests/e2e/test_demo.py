"""`make demo` end to end: the whole flow runs to a pending PluginUpdate and
everything it started is gone afterwards."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster


def test_the_demo_reaches_a_pending_update_and_tears_everything_down() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "localdev.demo", "--exit"], capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(
        r"hello-plugin\s+\S+\s+hello-plugin\s+github://demo/hello-plugin#v1.0.0\s+tag:latest\s+\w{12}\s+True",
        done.stdout,
    )
    assert re.search(r"hello-plugin-\w{12}\s+\S+\s+hello-plugin\s+\w{12}\s+\w{12}\s+Pending", done.stdout)
    cluster_dir = Path(re.findall(r"KUBECONFIG=(\S+)/kubeconfig", done.stdout)[0])
    assert not cluster_dir.exists()
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert str(cluster_dir) not in processes
