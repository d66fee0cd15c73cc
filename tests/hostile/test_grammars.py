"""Hostile values through the pure parsers: the source and track grammars, a
PluginInstall spec, the settings, what a pod reports back, and redaction.
Each input is refused with the named error (and says which part is wrong),
or, for redaction, its secret appears nowhere in the output."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

from plugin_operator.config import ConfigError, Settings
from plugin_operator.delivery.plugin import parse_remove_report
from plugin_operator.domain.errors import InvalidSource, InvalidSpec, InvalidTrack
from plugin_operator.domain.install_spec import parse_install_spec
from plugin_operator.domain.marker import parse_marker
from plugin_operator.domain.pods import plan_pod
from plugin_operator.domain.redact import redact
from plugin_operator.domain.source import parse_source
from plugin_operator.domain.track import parse_track

WS = "3f2c9a1e-8d4b-4c2a-9f1e-2b7d5c6a8e90"
GH = "github://acme/review#v1.0.0"


def source(raw: str) -> Callable[[], object]:
    return lambda: parse_source(raw, allow_unpinned=True)


def track(raw: str, src: str = GH) -> Callable[[], object]:
    return lambda: parse_track(raw, parse_source(src, allow_unpinned=True))


def spec(**fields: Any) -> Callable[[], object]:
    body: dict[str, Any] = {"workspace": WS, "source": GH, **fields}
    return lambda: parse_install_spec(body, allow_unpinned=True)


def settings(**env: str) -> Callable[[], object]:
    return lambda: Settings.from_env(env)


REFUSED: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    # -- source
    ("source-local-trailing-newline", source("local://review\n"), InvalidSource, "control character"),
    ("source-bare-name-trailing-newline", source("review\n"), InvalidSource, "control character"),
    ("source-owner-with-newline", source("github://acme\n/review#main"), InvalidSource, "control character"),
    ("source-ref-trailing-cr", source("github://acme/review#main\r"), InvalidSource, "control character"),
    ("source-nul-byte", source("local://re\x00view"), InvalidSource, "control character"),
    ("source-c1-next-line-char", source("github://acme/review#ma\x85in"), InvalidSource, "control character"),
    ("source-zero-width-space-in-ref", source("github://acme/review#v1\u200b"), InvalidSource, "only ASCII"),
    ("source-cyrillic-homoglyph-owner", source("github://\u0430cme/review#main"), InvalidSource, "owner"),
    ("source-subdir-climbs-out", source("github://acme/review/../../etc#main"), InvalidSource, "'..'"),
    ("source-ref-is-an-option", source("github://acme/review#-oProxyCommand=x"), InvalidSource, "'-'"),
    ("source-ref-with-dotdot", source("github://acme/review#refs/heads/../x"), InvalidSource, "'..'"),
    ("source-ref-reflog-syntax", source("github://acme/review#HEAD@{1}"), InvalidSource, "only ASCII"),
    ("source-repo-is-dot-git", source("github://acme/.git#main"), InvalidSource, "repository"),
    ("source-file-scheme", source("file:///etc/passwd"), InvalidSource, "scheme 'file'"),
    ("source-second-fragment", source("github://acme/review#main#x"), InvalidSource, "no whitespace"),
    ("source-credentials-in-owner", source("github://user:pw@acme/review#main"), InvalidSource, "owner"),
    ("source-name-129-chars", source("local://" + "a" * 129), InvalidSource, "at most 128"),
    ("source-600-chars", source("github://acme/review#" + "a" * 600), InvalidSource, "longer than 512"),
    ("source-percent-encoded-slash", source("github://acme/review%2F..#main"), InvalidSource, "repository"),
    ("source-backslash-in-repo", source("github://acme/re\\view#main"), InvalidSource, "repository"),
    ("source-space-in-subdir", source("github://acme/review/sub dir#main"), InvalidSource, "sub-directory"),
    ("source-ref-ends-in-lock", source("github://acme/review#main.lock"), InvalidSource, ".lock"),
    ("source-ref-hidden-component", source("github://acme/review#a/.hidden"), InvalidSource, "start with '.'"),
    ("source-unicode-local-name", source("local://révièw"), InvalidSource, "local plugin name"),
    # -- track
    ("track-sha-uppercase", track("sha:" + "A" * 40), InvalidTrack, "40 lowercase"),
    ("track-sha-39-chars", track("sha:" + "a" * 39), InvalidTrack, "40 lowercase"),
    ("track-tag-is-an-option", track("tag:--upload-pack=x"), InvalidTrack, "'-'"),
    ("track-semver-with-shell", track("semver:^1.2; rm -rf /"), InvalidTrack, "semver"),
    ("track-semver-huge-number", track("semver:^" + "9" * 80), InvalidTrack, "semver"),
    ("track-unknown-kind", track("ssh:main"), InvalidTrack, "expected none"),
    ("track-on-a-local-source", track("ref:main", "local://review"), InvalidTrack, "local://"),
    ("track-ref-with-newline-inside", track("ref:ma\nin"), InvalidTrack, "control character"),
    # -- spec
    ("spec-track-trailing-newline", spec(track="main\n"), InvalidSpec, "spec.track"),
    ("spec-workspace-trailing-newline", spec(workspace=WS + "\n"), InvalidSpec, "spec.workspace"),
    ("spec-workspace-64-chars", spec(workspace="a" * 64), InvalidSpec, "spec.workspace"),
    ("spec-workspace-not-a-string", spec(workspace=123), InvalidSpec, "spec.workspace"),
    ("spec-source-missing", spec(source=None), InvalidSpec, "spec.source"),
    ("spec-label-value-trailing-newline", spec(podSelector={"matchLabels": {"app": "web\n"}}), InvalidSpec, "web"),
    ("spec-label-key-trailing-newline", spec(podSelector={"matchLabels": {"app\n": "web"}}), InvalidSpec, "key"),
    ("spec-label-key-leading-dash", spec(podSelector={"matchLabels": {"-app": "web"}}), InvalidSpec, "key"),
    ("spec-label-value-64-chars", spec(podSelector={"matchLabels": {"app": "w" * 64}}), InvalidSpec, "value"),
    ("spec-label-value-an-integer", spec(podSelector={"matchLabels": {"app": 5}}), InvalidSpec, "value"),
    ("spec-label-prefix-uppercase", spec(podSelector={"matchLabels": {"Acme.io/app": "x"}}), InvalidSpec, "key"),
    (
        "spec-expression-unknown-operator",
        spec(podSelector={"matchExpressions": [{"key": "app", "operator": "Gt", "values": ["1"]}]}),
        InvalidSpec,
        "unknown operator",
    ),
    (
        "spec-expression-value-with-space",
        spec(podSelector={"matchExpressions": [{"key": "app", "operator": "In", "values": ["a b"]}]}),
        InvalidSpec,
        "invalid values",
    ),
    (
        "spec-expression-value-trailing-newline",
        spec(podSelector={"matchExpressions": [{"key": "app", "operator": "In", "values": ["web\n"]}]}),
        InvalidSpec,
        "invalid values",
    ),
    (
        "spec-expression-in-without-values",
        spec(podSelector={"matchExpressions": [{"key": "app", "operator": "In"}]}),
        InvalidSpec,
        "needs values",
    ),
    (
        "spec-expression-exists-with-values",
        spec(podSelector={"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]}),
        InvalidSpec,
        "takes no values",
    ),
    ("spec-empty-selector", spec(podSelector={"matchLabels": {}, "matchExpressions": []}), InvalidSpec, "every pod"),
    ("spec-selector-not-a-map", spec(podSelector="app=web"), InvalidSpec, "label selector"),
    ("spec-container-trailing-newline", spec(container="agent\n"), InvalidSpec, "spec.container"),
    ("spec-container-uppercase", spec(container="Agent"), InvalidSpec, "DNS-1123"),
    ("spec-container-64-chars", spec(container="a" * 64), InvalidSpec, "DNS-1123"),
    ("spec-restart-trailing-newline", spec(restart="Rollout\n"), InvalidSpec, "spec.restart"),
    ("spec-update-policy-lowercase", spec(updatePolicy="automatic"), InvalidSpec, "Manual or Automatic"),
    ("spec-suspend-a-string", spec(suspend="false"), InvalidSpec, "spec.suspend"),
    # -- settings
    ("config-base-url-userinfo", settings(GITHUB_BASE_URL="https://x:ghp_SECRET1@github.com"), ConfigError, "cred"),
    ("config-base-url-token-user", settings(GITHUB_BASE_URL="https://ghp_SECRET1@github.com"), ConfigError, "cred"),
    ("config-base-url-query-token", settings(GITHUB_BASE_URL="https://h/?token=SECRET1"), ConfigError, "query"),
    ("config-base-url-ftp", settings(GITHUB_BASE_URL="ftp://h/x"), ConfigError, "expected an http(s) URL"),
    ("config-base-url-broken-ipv6", settings(GITHUB_BASE_URL="https://[::1"), ConfigError, "not a URL"),
    ("config-duration-two-lines", settings(DRIFT_SWEEP_INTERVAL="5m\n1h"), ConfigError, "expected a duration"),
    ("config-duration-negative", settings(DRIFT_SWEEP_INTERVAL="-5m"), ConfigError, "expected a duration"),
    ("config-port-out-of-range", settings(PLUGIN_METRICS_PORT="70000"), ConfigError, "between 0 and 65535"),
    ("config-log-format-newline", settings(PLUGIN_LOG_FORMAT="json\n"), ConfigError, "expected json or text"),
]


@pytest.mark.parametrize(("parse", "error", "fragment"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_refused_with_the_named_error(parse: Callable[[], object], error: type[Exception], fragment: str) -> None:
    with pytest.raises(error) as info:
        parse()
    assert fragment in str(info.value)
    assert "SECRET1" not in str(info.value)


# -- what a pod reports back (untrusted) --------------------------------------------


def pod(configs_dir: str) -> Mapping[str, Any]:
    return {
        "metadata": {"name": "ws-0"},
        "spec": {"containers": [{"name": "agent", "env": [{"name": "CONFIGS_DIR", "value": configs_dir}]}]},
        "status": {"phase": "Running"},
    }


@pytest.mark.parametrize(
    "configs_dir",
    ["/configs\n", "/configs/../etc", "configs", "/con figs", "/configs;rm -rf /", "/configs/$(id)"],
    ids=["newline", "dotdot", "relative", "space", "semicolon", "command-substitution"],
)
def test_a_hostile_configs_dir_is_not_written_to(configs_dir: str) -> None:
    plan = plan_pod(pod(configs_dir), None)
    assert plan.problem == "CONFIGS_DIR is not a clean path"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"source": "x", "sha": "' + b"a" * 40 + b'\\n", "digest": "' + b"b" * 64 + b'"}',
        b'{"source": "x", "sha": null, "digest": "' + b"B" * 64 + b'"}',
        b'{"source": "x", "sha": null, "digest": "' + b"b" * 64 + b'\\n"}',
        b"[1, 2]",
        b"\xff\xfe",
        b'{"source": "' + b"x" * 5000 + b'"}',
    ],
    ids=[
        "marker-sha-newline",
        "marker-digest-uppercase",
        "marker-digest-newline",
        "marker-a-list",
        "marker-bytes",
        "marker-oversized",
    ],
)
def test_a_hostile_marker_is_not_trusted(raw: bytes) -> None:
    assert parse_marker(raw) is None


@pytest.mark.parametrize(
    ("stdout", "left_alone"),
    [
        (b"claude-md: removed -1\n", None),
        (b"claude-md: removed 1e9\n", None),
        (b"claude-md: ambiguous: \x1b]0;pwned\x07 line 1\n", "ambiguous content: ?]0;pwned? line 1"),
        (b"claude-md: left-alone: " + b"z" * 100_000, "left alone: " + "z" * 300),
    ],
    ids=["report-negative-count", "report-float-count", "report-terminal-escape", "report-100k-reason"],
)
def test_a_hostile_remove_report_is_bounded(stdout: bytes, left_alone: str | None) -> None:
    report = parse_remove_report(stdout)
    assert report.left_alone == left_alone and report.removed_blocks == 0


# -- redaction ---------------------------------------------------------------------

LEAKS = [
    ("https-user-password", "fatal: unable to access 'https://bob:SECRET1@git.acme.io/a/b.git/'"),
    ("https-token-as-user", "remote: https://SECRET1@github.com/acme/x.git not found"),
    ("x-access-token", "https://x-access-token:SECRET1@github.com/acme/x"),
    ("password-with-at-sign", "postgresql://app:SEC@RET1@db:5432/platform"),
    ("password-with-slash", "postgresql://app:SEC/RET1@db/platform"),
    ("percent-encoded-password", "postgres://app:S%40ECRET1@db/platform"),
    ("query-access-token", "https://git.acme.io/a.git?access_token=SECRET1"),
    ("query-signature", "https://bucket.s3/x?X-Amz-Signature=SECRET1&X-Amz-Credential=AKIA"),
    ("query-innocent-key", "https://h/x?v=1&t=SECRET1"),
    ("libpq-password", "host=db port=5432 user=app password=SECRET1 dbname=platform"),
    ("libpq-quoted-password", "host=db password='SEC RET1' dbname=platform"),
    ("authorization-bearer", "> Authorization: Bearer SECRET1"),
    ("authorization-basic", "http.extraheader=AUTHORIZATION: basic SECRET1"),
    ("proxy-authorization", "Proxy-Authorization: SECRET1"),
    ("env-style-token", "GITHUB_TOKEN=SECRET1 PGPASSWORD=SECRET1"),
    ("json-password", '{"user": "app", "password": "SECRET1"}'),
    ("repr-of-url-in-quotes", "DATABASE_URL='postgresql+psycopg://app:SECRET1@db/p'"),
    ("two-urls-on-one-line", "from https://a:SECRET1@h1/x to https://b:SECRET1@h2/y"),
    ("ssh-url-user", "ssh://SECRET1@git.acme.io/x.git"),
]


@pytest.mark.parametrize("text", [t for _, t in LEAKS], ids=[f"redact-{i}" for i, _ in LEAKS])
def test_redaction_leaves_no_secret(text: str) -> None:
    shown = redact(text)
    assert "SECRET1" not in shown and "RET1" not in shown
    assert redact(shown) == shown  # idempotent
