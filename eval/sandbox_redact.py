"""Redaction of anything that looks like a secret in text a sandboxed program wrote.

The kept stderr of programs goes into samples files, which users share; a program that
printed a token it could read must not publish it that way.
"""

from __future__ import annotations

import re

MARK = "[redacted]"
_ENV_NAME = r"[A-Z0-9_]*(?:KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|CREDENTIALS|AUTH)[A-Z0-9_]*"
_WORD_NAME = r"(?i:(?:api|access|secret|private|auth)[_-]?(?:key|token)|token|password|passwd|secret)"
_VALUE = r"""(['"]?\s*[:=]\s*)(['"]?)[^\s'",}]+"""
_PATTERNS = [
    # PEM blocks: private keys, certificates
    re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(?:-----END [A-Z0-9 ]+-----|\Z)", re.S),
    # NAME=value, NAME: value, 'NAME': 'value' where NAME says it holds a secret
    re.compile(r"(\b%s%s" % (_ENV_NAME, _VALUE[1:])),
    re.compile(r"(\b%s\b%s" % (_WORD_NAME, _VALUE[1:])),
    # vendor token formats
    re.compile(r"\bhf_[A-Za-z0-9]{10,}"),
    re.compile(r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_\-]{10,}"),
    re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"),
    re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b"),
    re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"),
    re.compile(r"\bglpat-[A-Za-z0-9_\-]{20,}"),
    re.compile(r"\bAIza[0-9A-Za-z_\-]{35}"),
    re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"),  # JWT
    # URLs with a password: scheme://user:password@host
    re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"),
]
# long runs of hex or base64 with letters and digits mixed: key material
_LONG = re.compile(r"[A-Za-z0-9+/_\-]{32,}={0,2}")


def redact(text: str) -> str:
    """`text` with every token-looking string replaced by [redacted]."""
    for pattern in _PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + m.group(2) + MARK, text)
        else:
            text = pattern.sub(MARK, text)
    return _LONG.sub(_long, text)


def _long(match: re.Match) -> str:
    s = match.group(0)
    if max(len(part) for part in re.split(r"[/_\-+]", s)) < 12:
        return s  # short words joined: a path or an identifier, not key material
    mixed = any(c.isdigit() for c in s) and any(c.isalpha() for c in s)
    return MARK if mixed or len(set(s)) >= 12 else s


def cut(text: str, limit: int, more: bool) -> str:
    """At most `limit` characters; when the text was cut (`more`), its last partial word is
    dropped too, so a secret cut in half does not leave its beginning behind."""
    if len(text) > limit:
        text, more = text[:limit], True
    if more:
        text = text[: max(text.rfind(" "), text.rfind("\n"), 0)] + " [...]"
    return text
