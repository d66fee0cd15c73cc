"""Credentials out of text: one function for every message, log line, status
and Event that may carry a URL or a connection string (design §8).

`redact(text)` replaces
- a URL's whole userinfo (`scheme://user:pass@host` and `scheme://token@host`
  -> `scheme://***@host`): the user part may itself be a token
  (`https://<token>:x-oauth-basic@github.com`);
- every query-string value of a URL (`?token=abc&x=1` -> `?token=***&x=***`):
  keys are kept, values may be signatures, tokens or passwords;
- `Authorization:` / `Proxy-Authorization:` header values (the scheme word,
  e.g. `Bearer`, is kept) and `Cookie:` / `Set-Cookie:` values;
- `key=value` and `key: value` pairs whose key looks secret (password,
  passwd, pwd, secret, token, api_key, credential ...), as in a libpq
  connection string (`host=db password=s3cret` -> `host=db password=***`),
  quoted values included.

It is pure and idempotent, over-redacts rather than leaks (a URL path holding
`user:x@` loses it), and never fails. `RedactingFilter` applies it to every
log record (message, arguments and traceback text).
"""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "***"

_SCHEME = r"[A-Za-z][A-Za-z0-9+.-]*://"
# user:password@ : the user has no '/', ':', '@'; the password runs to the
# last '@' before whitespace (unencoded '@', '/' or ':' in a password still
# end up masked).
_USER_PASSWORD = re.compile(rf"({_SCHEME})([^\s/:@?#'\"<>]*):[^\s'\"<>]*@")
# token@ : userinfo without a colon is a credential on its own.
_USER_TOKEN = re.compile(rf"({_SCHEME})[^\s/:@?#'\"<>]+@")
# A URL with a query string; the query runs to whitespace, a quote or '#'.
_URL_QUERY = re.compile(rf"({_SCHEME}[^\s?#'\"<>]*\?)([^\s#'\"<>]*)")
_QUERY_PAIR = re.compile(r"([^&;=]*)=([^&;]*)")
_AUTH_HEADER = re.compile(
    r"(?i)\b((?:proxy-)?authorization\s*[:=]\s*)"
    r"(?:(basic|bearer|token|digest|negotiate|ntlm|aws4-hmac-sha256)\s+)?"
    r"[^\s'\",;]+"
)
_COOKIE_HEADER = re.compile(r"(?i)\b((?:set-)?cookie\s*:\s*)[^\r\n]+")
_SENSITIVE_NAMES = (
    r"(?i)\b([A-Za-z0-9_.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|private[_-]?key|"
    r"access[_-]?key|credentials?|passphrase)[A-Za-z0-9_.-]*)"
)
_SECRET_PAIR = re.compile(
    _SENSITIVE_NAMES + r"(['\"]?\s*[=:]\s*)"
    r"(?!\*\*\*(?:[\s'\",;&#]|$))('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s'\",;&]+)"
)


def _mask_query(match: re.Match[str]) -> str:
    query = _QUERY_PAIR.sub(lambda m: f"{m.group(1)}={MASK}", match.group(2))
    return match.group(1) + query


def _mask_pair(match: re.Match[str]) -> str:
    value = match.group(3)
    quote = value[0] if value[:1] in ("'", '"') and len(value) > 1 else ""
    return f"{match.group(1)}{match.group(2)}{quote}{MASK}{quote}"


def redact(text: str) -> str:
    """`text` with every credential this module knows the shape of masked."""
    if not text:
        return text
    text = _USER_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    text = _USER_TOKEN.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    text = _URL_QUERY.sub(_mask_query, text)
    text = _AUTH_HEADER.sub(lambda m: m.group(1) + (f"{m.group(2)} " if m.group(2) else "") + MASK, text)
    text = _COOKIE_HEADER.sub(lambda m: m.group(1) + MASK, text)
    return _SECRET_PAIR.sub(_mask_pair, text)


class RedactingFilter(logging.Filter):
    """Redacts a record's message (with its arguments merged in) and its
    traceback text. Installed on the root logger, its handlers, and as part
    of the record factory, so records of every library are covered."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    if getattr(record, "_redacted", False):
        return record
    try:
        message = record.getMessage()
    except Exception:  # a malformed format string: keep what can be shown
        message = f"{record.msg} {record.args!r}"
    record.msg = redact(message)
    record.args = ()
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    setattr(record, "_redacted", True)  # noqa: B010 - LogRecord carries free attributes
    return record


_installed = False


def install_log_redaction() -> None:
    """Every log record, from any logger, is redacted before a handler sees
    it: a filter on the root logger and its handlers, and a record factory
    (a filter on the root logger alone misses records propagated from other
    loggers). Idempotent."""
    global _installed
    root = logging.getLogger()
    redacting = RedactingFilter()
    if not any(isinstance(f, RedactingFilter) for f in root.filters):
        root.addFilter(redacting)
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(redacting)
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return redact_record(previous(*args, **kwargs))

    logging.setLogRecordFactory(factory)
    _installed = True
