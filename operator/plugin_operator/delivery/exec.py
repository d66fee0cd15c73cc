"""Run the fixed pod script through the pods/exec API (as `kubectl cp` does).

The kubernetes client's websocket stream is blocking, so each exec runs in a
worker thread with its own ApiClient. The v5 channel protocol lets us close
stdin, so `tar -x` sees the end of its input. Exit status and stderr are
checked; everything read back is treated as untrusted and bounded.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass
from importlib import resources

from kubernetes import client
from kubernetes.stream import stream
from kubernetes.stream.ws_client import ERROR_CHANNEL, STDERR_CHANNEL, STDIN_CHANNEL, STDOUT_CHANNEL

from plugin_operator.concurrency import KeyedLock
from plugin_operator.domain.errors import DeliveryFailed

POD_SCRIPT = resources.files(__package__).joinpath("pod-script.sh").read_text()
_MAX_OUTPUT = 64 * 1024
_CHUNK = 256 * 1024


@dataclass(frozen=True)
class PodTarget:
    namespace: str
    pod: str
    container: str
    configs_dir: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.pod}"


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: str


def _exit_code(error_channel: str) -> int:
    if not error_channel.strip():
        return 0
    try:
        status = json.loads(error_channel)
    except ValueError:
        return -1
    if status.get("status") == "Success":
        return 0
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            try:
                return int(cause.get("message"))
            except (TypeError, ValueError):
                return -1
    return -1


def _exec_blocking(
    api_client: client.ApiClient, target: PodTarget, argv: list[str], stdin: bytes | None, timeout: float
) -> ExecResult:
    core = client.CoreV1Api(api_client)
    ws = stream(
        core.connect_get_namespaced_pod_exec,
        target.pod,
        target.namespace,
        container=target.container,
        command=argv,
        stdin=stdin is not None,
        stdout=True,
        stderr=True,
        tty=False,
        binary=True,
        _preload_content=False,
        _request_timeout=timeout,
    )
    out, err, error_channel = bytearray(), bytearray(), b""
    deadline = time.monotonic() + timeout
    try:
        if stdin is not None:
            for start in range(0, len(stdin), _CHUNK):
                ws.write_channel(STDIN_CHANNEL, stdin[start : start + _CHUNK])
            ws.close_channel(STDIN_CHANNEL)
        while ws.is_open():
            if time.monotonic() > deadline:
                raise DeliveryFailed(f"pod {target}: in-pod command timed out after {timeout:.0f}s")
            ws.update(timeout=1)
            if ws.peek_channel(STDOUT_CHANNEL):
                out += ws.read_channel(STDOUT_CHANNEL)[: _MAX_OUTPUT - len(out)]
            if ws.peek_channel(STDERR_CHANNEL):
                err += ws.read_channel(STDERR_CHANNEL)[: _MAX_OUTPUT - len(err)]
            if ws.peek_channel(ERROR_CHANNEL):
                error_channel += ws.read_channel(ERROR_CHANNEL)[:_MAX_OUTPUT]
        out += ws.read_channel(STDOUT_CHANNEL)[: _MAX_OUTPUT - len(out)]
        err += ws.read_channel(STDERR_CHANNEL)[: _MAX_OUTPUT - len(err)]
        error_channel += ws.read_channel(ERROR_CHANNEL)[:_MAX_OUTPUT]
    finally:
        ws.close()
    error_text = error_channel.decode("utf-8", "replace")
    code = _exit_code(error_text)
    stderr = err.decode("utf-8", "replace")
    if code != 0 and not stderr.strip():
        stderr = error_text
    return ExecResult(code, bytes(out), stderr)


class PodExecutor:
    """Runs the pod script in pods, with a bound on concurrent execs."""

    def __init__(self, api_client_factory: type[client.ApiClient] | None = None, *, concurrency: int, timeout: float):
        self._new_client = api_client_factory or client.ApiClient
        self._limit = asyncio.Semaphore(concurrency)
        self._writing = KeyedLock[tuple[str, str]]()
        self._timeout = timeout

    async def run_script(self, target: PodTarget, op: str, *args: str, stdin: bytes | None = None) -> ExecResult:
        if op == "read":
            return await self._run(target, op, *args, stdin=stdin)
        # Installs and removals of different plugins share the pod's configs
        # dir (plugins/, skills/, CLAUDE.md): one writer per pod at a time.
        async with self._writing.hold((target.namespace, target.pod)):
            return await self._run(target, op, *args, stdin=stdin)

    async def _run(self, target: PodTarget, op: str, *args: str, stdin: bytes | None) -> ExecResult:
        argv = ["/bin/sh", "-c", POD_SCRIPT, "plugin-operator", op, target.configs_dir, *args]
        async with self._limit:
            api_client = self._new_client()
            try:
                return await asyncio.to_thread(_exec_blocking, api_client, target, argv, stdin, self._timeout)
            except DeliveryFailed:
                raise
            except client.ApiException as exc:
                raise DeliveryFailed(f"pod {target}: exec refused: {exc.status} {exc.reason}") from None
            except Exception as exc:  # websocket and socket errors
                raise DeliveryFailed(f"pod {target}: exec failed: {type(exc).__name__}: {exc}") from None
            finally:
                api_client.close()

    async def checked(self, target: PodTarget, op: str, *args: str, stdin: bytes | None = None) -> bytes:
        result = await self.run_script(target, op, *args, stdin=stdin)
        if result.exit_code != 0:
            detail = " ".join(result.stderr.split())[:300]
            raise DeliveryFailed(f"pod {target}: {op} failed (exit {result.exit_code}): {detail}")
        return result.stdout


def new_token() -> str:
    return secrets.token_hex(6)
