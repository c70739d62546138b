"""The one place that decides what of a configuration value may appear in a log or a message.

Every line that prints configuration (start-up and reload lines, validation errors, DSNs and URLs,
key files) goes through :func:`mask_secret` (a value under a dotted key) or :func:`mask_text`
(free text that may hold a URL or a libpq string). What is masked:

* the whole value of a key that is a secret: any dotted part ``password``, ``api_keys`` or
  ``stdio_api_key`` (``vault.redis.password``, ``auth.api_keys.0``);
* the password of every URL (``scheme://user:PASSWORD@host``) and every libpq ``password=...``.

An empty value stays empty, so a log still says whether a secret is set.
"""

from __future__ import annotations

import re

MASK = "***"
# Dotted-key parts whose whole value is secret: passwords and API keys.
SECRET_PARTS = frozenset({"password", "api_keys", "stdio_api_key"})
# A password inside a URL (scheme://user:PASSWORD@host) or a libpq key=value string.
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
_KV_PASSWORD = re.compile(r"""(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&;,]+)""", re.IGNORECASE)


def is_secret_key(key: str) -> bool:
    """True when the value under dotted ``key`` is a secret as a whole."""
    return any(part in SECRET_PARTS for part in key.split("."))


def mask_text(text: str) -> str:
    """``text`` with every URL password and ``password=...`` value replaced by ``***``."""
    return _KV_PASSWORD.sub(rf"\1{MASK}", _URL_PASSWORD.sub(rf"\1{MASK}@", text))


def mask_secret(key: str, value: object) -> object:
    """``value`` fit for a log line: secret keys masked whole, passwords cut out of strings.

    ``vault.redis.password`` or ``auth.api_keys`` shows as ``***`` (empty stays empty);
    ``vault.postgres.dsn`` keeps its host and drops its password; mappings and lists are masked
    item by item.
    """
    if is_secret_key(key):
        return MASK if value else value
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: mask_secret(f"{key}.{k}", v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_secret(key, v) for v in value]
    return value


def mask_error(text: str) -> str:
    """A validation error (one ``key: problem (got VALUE); fix`` a line) with passwords cut out
    and a secret key's offending value dropped."""
    lines = []
    for line in mask_text(text).splitlines():
        key = line.strip().split(":", 1)[0]
        if is_secret_key(key):
            line = re.sub(r" \(got .*\)", "", line)
        lines.append(line)
    return "\n".join(lines)
