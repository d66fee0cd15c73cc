"""Run the fixed pod script through the pods/exec API (as `kubectl cp` does).

The kubernetes client's websocket stream is blocking, so each exec runs in a
worker thread with its own ApiClient. The v5 channel protocol lets us close
stdin, so `tar -x` sees the end of its input. Exit status and stderr are
checked; everything read back is treated as untrusted and bounded.
"""

from __future__ import annotations

import asyncio
import json
import re
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
    write_error: Exception | None = None
    try:
        if stdin is not None:
            # The script may stop reading early (its tar failed: a full or
            # read-only disk): the write then fails, but what it said on
            # stderr and its exit status are still there to read.
            try:
                for start in range(0, len(stdin), _CHUNK):
                    ws.write_channel(STDIN_CHANNEL, stdin[start : start + _CHUNK])
                ws.close_channel(STDIN_CHANNEL)
            except Exception as exc:  # websocket and socket errors
                write_error = exc
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
    stderr = err.decode("utf-8", "replace")
    if not error_text.strip() and not stderr.strip() and write_error is not None:
        raise write_error
    code = _exit_code(error_text) if error_text.strip() or write_error is None else -1
    if code != 0 and not stderr.strip():
        stderr = _status_said(error_text, code)
    return ExecResult(code, bytes(out), stderr)


def _status_said(error_channel: str, code: int) -> str:
    """The error channel's Status in words (its `message`), for an exec
    that failed without a word on stderr."""
    try:
        status = json.loads(error_channel)
        message = str(status.get("message") or "") if isinstance(status, dict) else ""
    except ValueError:
        message = error_channel
    if code == 137:
        return "the in-pod command was killed (SIGKILL: out of memory, or the container is stopping)"
    if code == 126 or code == 127:
        return f"the container cannot run /bin/sh (exit {code}): {message}".strip()
    return message or "the exec stream ended without a status (the connection to the pod was lost)"


def explain_exec_failure(target: PodTarget, exc: BaseException) -> str:
    """An exec/websocket failure in words a person understands."""
    text = " ".join(str(exc).split())[:300]
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    kind = type(exc).__name__
    if status is None:
        found = re.search(r"[Hh]andshake status (\d{3})", text)
        status = int(found.group(1)) if found else None
    lowered = text.lower()
    if status == 404 or ("not found" in lowered and "container" not in lowered):
        return f"pod {target}: the pod is gone (deleted or replaced) ({kind}: {text})"
    if status == 403:
        return f"pod {target}: the operator may not exec into this pod (pods/exec forbidden in {target.namespace})"
    if "container not found" in lowered or "is not running" in lowered or "pod is not running" in lowered:
        return f"pod {target}: the container {target.container} is not running (restarting or stopping): {text}"
    if status == 400 or status == 500:
        return f"pod {target}: the API server refused the exec ({status}): {text}"
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)) or "closed" in lowered or "lost" in lowered:
        return (
            f"pod {target}: the connection to the pod was lost mid-transfer (the pod was deleted or restarted, "
            f"or the API server went away); nothing was swapped in ({kind})"
        )
    return f"pod {target}: exec failed: {kind}: {text}"


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
            except Exception as exc:  # API refusals, websocket and socket errors
                raise DeliveryFailed(explain_exec_failure(target, exc)) from None
            finally:
                api_client.close()

    async def checked(self, target: PodTarget, op: str, *args: str, stdin: bytes | None = None) -> bytes:
        result = await self.run_script(target, op, *args, stdin=stdin)
        if result.exit_code != 0:
            said = [line.strip() for line in result.stderr.splitlines() if line.startswith("plugin-operator: ")]
            if result.exit_code == 3 and said:
                # The pod script's own words (design §4): already plain.
                detail = " ".join(said[-1].removeprefix("plugin-operator: ").split())[:400]
                raise DeliveryFailed(f"pod {target}: {op} failed: {detail}")
            detail = " ".join(result.stderr.split())[:300]
            raise DeliveryFailed(f"pod {target}: {op} failed (exit {result.exit_code}): {detail}")
        return result.stdout


def new_token() -> str:
    return secrets.token_hex(6)
