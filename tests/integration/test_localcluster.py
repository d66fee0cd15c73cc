"""The local control plane harness itself: failures name the component and
its log, and leave nothing behind; two clusters on one machine coexist."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from localdev.cluster import ClusterError, LocalCluster

pytestmark = pytest.mark.cluster


def _processes_under(path: Path) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if str(path) in line]


def test_a_binary_that_fails_to_start_is_named_with_its_log_and_nothing_is_left(
    kube: LocalCluster, tmp_path: Path
) -> None:
    broken = tmp_path / "bin"
    broken.mkdir()
    for binary in kube.bin_dir.iterdir():
        (broken / binary.name).symlink_to(binary)
    (broken / "kube-apiserver").unlink()
    (broken / "kube-apiserver").write_text("#!/bin/sh\necho 'listen tcp: address already in use' >&2\nexit 1\n")
    (broken / "kube-apiserver").chmod(0o755)
    before = set(os.listdir("/tmp"))

    with pytest.raises(ClusterError) as failure, LocalCluster.start(bin_dir=broken):
        pass

    message = str(failure.value)
    assert "kube-apiserver" in message and "exited with status 1" in message
    log = Path(message.split("log: ")[1].split()[0])
    assert "address already in use" in log.read_text()
    assert not _processes_under(broken), "etcd was stopped again"
    leftovers = {n for n in set(os.listdir("/tmp")) - before if n.startswith("plugin-operator-cluster-")}
    assert not leftovers
    log.unlink()


def test_a_missing_binary_is_named(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="etcd is missing"), LocalCluster.start(bin_dir=tmp_path):
        pass


def test_two_clusters_on_one_machine_do_not_collide(kube: LocalCluster) -> None:
    with LocalCluster.start(apply_crds=False, bin_dir=kube.bin_dir) as second:
        assert second.server != kube.server
        second.kubectl("create", "namespace", "only-here")
        assert kube.kubectl("get", "namespace", "only-here", check=False).returncode != 0
    assert kube.kubectl("get", "nodes").returncode == 0
