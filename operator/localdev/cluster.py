"""A real, throwaway Kubernetes control plane on 127.0.0.1.

etcd + kube-apiserver + kube-controller-manager + kwok (simulated nodes whose
pods reach Running and accept `kubectl exec`, run as host processes), on free
ports, with a private CA, an admin kubeconfig and one kwok Node. Used by the
pytest fixtures and by the demo.

    with LocalCluster.start() as kube:
        kube.kubectl("get", "nodes")

Teardown stops every process group and removes the temporary directory, also
when the caller fails or is interrupted; children also die with the parent
(PR_SET_PDEATHSIG), so a killed test run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-k8s.sh"
CRD_DIR = REPO_ROOT / "crds"
NODE_NAME = "kwok-node-0"


class ClusterError(RuntimeError):
    """A component failed; the message names it and where its log is."""


class KubectlError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"kubectl {' '.join(self.cmd[1:])} exited {self.returncode}: {self.stderr.strip()}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def binaries_dir() -> Path:
    """The cached control-plane binaries: $PLUGIN_OPERATOR_BIN, else build (or
    reuse the cache) through scripts/build-k8s.sh."""
    env = os.environ.get("PLUGIN_OPERATOR_BIN")
    if env:
        return Path(env)
    done = subprocess.run([str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise ClusterError(f"building the control-plane binaries failed (see the messages above from {BUILD_SCRIPT})")
    return Path(done.stdout.strip().splitlines()[-1])


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: new process group, and SIGKILL
    # when the parent goes away for any reason.
    os.setpgrp()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


def stop_process_group(popen: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """Signal a child's whole process group; SIGKILL it after `grace` seconds."""
    if popen.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, sig)
    try:
        popen.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()


# -- PKI ---------------------------------------------------------------------


def _write_pki(pki: Path) -> None:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("plugin-operator-local-ca")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def issue(cn: str, org: str | None, server: bool) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn, org))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            sans: list[x509.GeneralName] = [
                x509.DNSName("localhost"),
                x509.DNSName("kubernetes"),
                x509.DNSName("kubernetes.default"),
                x509.DNSName("kubernetes.default.svc"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("10.96.0.1")),
            ]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            usage = x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
        else:
            usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)

    pki.mkdir(parents=True)
    (pki / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    serving_cert, serving_key = issue("kube-apiserver", None, server=True)
    (pki / "apiserver.crt").write_bytes(serving_cert)
    (pki / "apiserver.key").write_bytes(serving_key)
    admin_cert, admin_key = issue("local-admin", "system:masters", server=False)
    (pki / "admin.crt").write_bytes(admin_cert)
    (pki / "admin.key").write_bytes(admin_key)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (pki / "sa.key").write_bytes(key_pem(sa_key))
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _kubeconfig(server: str, pki: Path) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "local", "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")}}
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate": str(pki / "admin.crt"),
                        "client-key": str(pki / "admin.key"),
                    },
                }
            ],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
            "current-context": "local",
        },
        indent=2,
    )


_KWOK_EXEC = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterExec
metadata:
  name: host-exec
spec:
  execs:
  - local:
      workDir: {workdir}
"""


# -- the cluster ---------------------------------------------------------------


@dataclass
class LocalCluster:
    workdir: Path
    bin_dir: Path
    kubeconfig: Path = field(init=False)
    server: str = ""
    node_name: str = NODE_NAME
    _procs: list[_Proc] = field(default_factory=list)
    _closed: bool = False

    def __post_init__(self) -> None:
        self.kubeconfig = self.workdir / "kubeconfig"

    # Lifecycle --------------------------------------------------------------

    @classmethod
    @contextlib.contextmanager
    def start(cls, *, apply_crds: bool = True, bin_dir: Path | None = None) -> Iterator[LocalCluster]:
        workdir = Path(tempfile.mkdtemp(prefix="plugin-operator-cluster-"))
        cluster = cls(workdir=workdir, bin_dir=bin_dir or binaries_dir())
        try:
            cluster._boot()
            if apply_crds:
                cluster.apply_crds()
            yield cluster
        finally:
            cluster.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for proc in reversed(self._procs):
            stop_process_group(proc.popen)
        self._procs.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _boot(self) -> None:
        for binary in ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "kwok"):
            if not (self.bin_dir / binary).is_file():
                raise ClusterError(f"{binary} is missing from {self.bin_dir}; run scripts/build-k8s.sh")
        pki = self.workdir / "pki"
        _write_pki(pki)
        (self.workdir / "logs").mkdir()
        self._start_etcd()
        self._start_apiserver(pki)
        self._start_controller_manager(pki)
        self._start_kwok()
        self._create_node()

    def _spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> _Proc:
        log = self.workdir / "logs" / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env={**os.environ, **(env or {})},
                preexec_fn=_die_with_parent,  # the child runs no threads yet
            )
        proc = _Proc(name, popen, log)
        self._procs.append(proc)
        return proc

    def _fail(self, proc: _Proc, why: str) -> ClusterError:
        # The workdir goes away at teardown: keep the failed component's log.
        kept = Path(tempfile.gettempdir()) / f"plugin-operator-{proc.name}-{os.getpid()}-{int(time.time())}.log"
        with contextlib.suppress(OSError):
            shutil.copyfile(proc.log, kept)
        tail = ""
        with contextlib.suppress(OSError):
            tail = "\n".join(kept.read_text(errors="replace").splitlines()[-15:])
        return ClusterError(f"{proc.name} {why}; log: {kept}\n{tail}")

    def _wait(self, proc: _Proc, ready: Callable[[], bool], timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise self._fail(proc, f"exited with status {proc.popen.returncode} while starting")
            with contextlib.suppress(Exception):
                if ready():
                    return
            time.sleep(0.2)
        raise self._fail(proc, f"was not ready after {timeout:.0f}s")

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        proc = self._spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=local",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=local=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as resp:  # noqa: S310
                return bool(json.load(resp).get("health") == "true")

        self._wait(proc, healthy)

    def _start_apiserver(self, pki: Path) -> None:
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        proc = self._spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--authorization-mode=Node,RBAC",
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                "--profiling=false",
                "--v=1",
            ],
        )
        self.kubeconfig.write_text(_kubeconfig(self.server, pki))
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

        def ready() -> bool:
            with urllib.request.urlopen(f"{self.server}/readyz", timeout=3, context=ctx) as resp:  # noqa: S310
                return bool(resp.status == 200)

        self._wait(proc, ready, timeout=120)

    def _start_controller_manager(self, pki: Path) -> None:
        proc = self._spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--cert-dir={self.workdir / 'kcm-certs'}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--use-service-account-credentials=false",
                "--leader-elect=false",
                "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service,-route",
                "--v=1",
            ],
        )

        # Ready when its serviceaccount controller has made `default` in default.
        def ready() -> bool:
            return self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0

        self._wait(proc, ready, timeout=120)

    def _start_kwok(self) -> None:
        port = free_port()
        kwok_dir = self.workdir / "kwok"
        kwok_dir.mkdir()
        exec_cfg = kwok_dir / "exec.yaml"
        exec_cfg.write_text(_KWOK_EXEC.format(workdir=json.dumps(str(self.workdir))))
        proc = self._spawn(
            "kwok",
            [
                str(self.bin_dir / "kwok"),
                f"--kubeconfig={self.kubeconfig}",
                "--manage-all-nodes=true",
                "--node-name=localhost",
                "--node-ip=127.0.0.1",
                f"--node-port={port}",
                f"--server-address=127.0.0.1:{port}",
                f"--config={self.bin_dir / 'kwok-stages.fast.yaml'}",
                f"--config={exec_cfg}",
            ],
            env={"KWOK_WORKDIR": str(kwok_dir)},
        )

        def listening() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True

        self._wait(proc, listening)
        self._kwok = proc

    def _create_node(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"type": "kwok", "kubernetes.io/hostname": self.node_name},
            },
            "spec": {},
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(node))
        self._wait(
            self._kwok,
            lambda: (
                self.kubectl(
                    "get",
                    "node",
                    self.node_name,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                ).stdout
                == "True"
            ),
        )

    # Use --------------------------------------------------------------------

    def kubectl(
        self,
        *args: str,
        input: str | None = None,  # noqa: A002 - the same name as subprocess.run
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise KubectlError(done.returncode, argv, done.stdout, done.stderr)
        return done

    def apply_crds(self) -> None:
        self.kubectl("apply", "--server-side", "-f", str(CRD_DIR))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRD_DIR))

    def env(self) -> dict[str, str]:
        """Environment for a child process (kubectl, the operator) using this cluster."""
        path = f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": path}

    def logs(self) -> dict[str, Path]:
        return {proc.name: proc.log for proc in self._procs}
