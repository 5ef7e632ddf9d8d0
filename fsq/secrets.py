"""Passphrase intake: one way in, never out (STYLE.md #7; modelled on borg's
``helpers/passphrase.py``).

A passphrase reaches fsq in exactly one of three ways:

1. the ``FSQ_VAULT_PASSPHRASE`` setting (the caller passes its value as ``env``),
2. ``--passphrase-file FILE`` (first line of the file, trailing newline removed),
3. an interactive prompt (``getpass``), only when stdin is a terminal and the command allows it.

Giving both 1 and 2 is an error rather than a silent precedence rule: an admin who believes the
file is used while a stale environment variable wins would lock evidence with the wrong
passphrase. The value is wrapped in ``Secret`` straight away; ``repr``/``str`` print
``Secret(***)``, pickling is refused, and no message built here ever contains the value.

Secrets never come out: ``mask_secrets`` is the ONE masking function every output path uses
(``fsq config show``, log lines, warnings, error lines with and without ``--debug``, ``--json``,
reports, audit details). It hides

* every registered secret value, whatever its shape (``register_secret``: each ``Secret`` and
  each setting marked secret registers itself; a passphrase containing ``://``, the serve
  token, an API key), also in its JSON-, HTML- and URL-escaped forms;
* URL userinfo passwords (``postgresql://u:PW@h`` -> ``postgresql://u:***@h``);
* URL query parameters that carry credentials (``?password=``, ``sslpassword``, ``token``,
  ``key``, ``api_key``, ``secret``, ``X-Amz-Signature``, ...);
* libpq keyword DSN passwords (``host=db password=PW`` and ``password='P W'``).

Limit: a registered value shorter than ``MIN_LITERAL`` characters is masked only where one of
the patterns finds it (masking every "abc" in a report would be noise and would not hide much).

(The module name shadows the standard library's ``secrets`` only for code that does
``from fsq import secrets``; ``import secrets`` elsewhere in the package still gets the stdlib.)
"""

from __future__ import annotations

import getpass
import html
import json
import logging
import os
import re
import stat
import sys
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

from fsq.errors import ConfigError

log = logging.getLogger(__name__)

ENV_NAME = "FSQ_VAULT_PASSPHRASE"
FILE_OPTION = "--passphrase-file"
MASK = "***"
MIN_LITERAL = 6

# --- masking ------------------------------------------------------------------------------------

_KNOWN: set[str] = set()
_FORMS: list[str] = []          # every registered value and its escaped forms, longest first

_PARAMS = (r"password|passwd|pwd|pass|sslpassword|passphrase|token|access_token|"
           r"refresh_token|auth|authorization|api_key|apikey|api-key|key|secret|"
           r"client_secret|signature|sig|credential|x-amz-signature|x-amz-credential|"
           r"x-amz-security-token")
_QUERY_RE = re.compile(r"(?i)([?&;](?:%s)=)[^&#\s'\"<>]*" % _PARAMS)
_USERINFO_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^/@\s:'\"<>]*):[^@\s'\"<>]*@")
_DSN_RE = re.compile(r"(?i)\b((?:ssl)?password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s'\"&]+)")


def register_secret(value: Any) -> None:
    """Remember a secret value so ``mask_secrets`` hides it wherever it shows up."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return
    if not isinstance(value, str) or len(value) < MIN_LITERAL or value in _KNOWN:
        return
    _KNOWN.add(value)
    forms = {value, json.dumps(value)[1:-1], html.escape(value), html.escape(value, False),
             quote(value, safe=""), quote_plus(value)}
    _FORMS.extend(f for f in forms if len(f) >= MIN_LITERAL and f not in _FORMS)
    _FORMS.sort(key=len, reverse=True)


def register_url_secret(url: Any) -> None:
    """For a connection string: register just its password (URL userinfo, ``password=``
    query or keyword parameter), so the rest of it stays readable where it is shown."""
    if not isinstance(url, str):
        return
    try:
        pw = urlsplit(url).password if "://" in url else None
    except ValueError:
        pw = None
    if pw:
        register_secret(pw)
    for m in re.finditer(r"(?i)(?:^|[?&;\s])(?:%s)\s*=\s*('(?:[^'\\]|\\.)*'|[^&#\s]+)"
                         % _PARAMS, url):
        v = m.group(1)
        register_secret(v[1:-1] if v.startswith("'") else v)


def mask_secrets(text: Any) -> Any:
    """``text`` with every secret hidden (see the module docstring). Non-strings pass."""
    if not isinstance(text, str) or not text:
        return text
    for form in _FORMS:
        if form in text:
            text = text.replace(form, MASK)
    text = _USERINFO_RE.sub(lambda m: m.group(1) + ":" + MASK + "@", text)
    text = _QUERY_RE.sub(lambda m: m.group(1) + MASK, text)
    return _DSN_RE.sub(lambda m: m.group(1) + MASK, text)


def redact(obj: Any) -> Any:
    """``mask_secrets`` over every string (keys and values) of a JSON-like structure."""
    if isinstance(obj, str):
        return mask_secrets(obj)
    if isinstance(obj, dict):
        return {redact(k): redact(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    return obj


class MaskingFormatter(logging.Formatter):
    """A log formatter whose every line (message, arguments, traceback) goes through
    ``mask_secrets``."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


class Secret:
    """A secret value that does not print itself. ``reveal()`` is the only way out."""

    __slots__ = ("_value",)

    def __init__(self, value: str | bytes) -> None:
        if not isinstance(value, (str, bytes)):
            raise TypeError("Secret wraps str or bytes")
        self._value = value
        register_secret(value)

    def reveal(self) -> str | bytes:
        return self._value

    def reveal_bytes(self) -> bytes:
        """The value as bytes (UTF-8 for a str), e.g. as KDF input."""
        v = self._value
        return v.encode("utf-8") if isinstance(v, str) else v

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "Secret(***)"

    def __reduce__(self):  # pickle, copy: never let the value travel by accident
        raise TypeError("a Secret cannot be pickled")


def _read_file(path: str, what: str) -> Secret:
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) and not stat.S_ISFIFO(st.st_mode):
                raise ConfigError(f"{FILE_OPTION} {path} is not a regular file")
            data = f.readline()
    except ConfigError:
        raise
    except OSError as e:
        raise ConfigError(f"cannot read {what} file {path}: {e.strerror or e}") from None
    if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
        log.warning("%s file %s is readable by group or others (mode %03o); run `chmod 600 %s`",
                    what, path, stat.S_IMODE(st.st_mode), path)
    if data.endswith(b"\n"):
        data = data[:-1]
        if data.endswith(b"\r"):
            data = data[:-1]
    if not data:
        raise ConfigError(f"{what} file {path} is empty (the first line is the passphrase)")
    try:
        return Secret(data.decode("utf-8"))
    except UnicodeDecodeError:
        # A binary passphrase (e.g. random bytes) is fine; keep it as bytes.
        return Secret(data)


def _prompt(what: str, confirm: bool) -> Secret:
    try:
        first = getpass.getpass(f"Enter {what}: ")
        if not first:
            raise ConfigError(f"empty {what}; an empty passphrase is not allowed")
        if confirm:
            second = getpass.getpass(f"Repeat {what}: ")
            if second != first:
                raise ConfigError(f"the two {what} entries differ; nothing was changed")
    except EOFError:
        raise ConfigError(f"no {what} entered") from None
    return Secret(first)


MIN_NEW_PASSPHRASE = 12  # characters (bytes for a binary passphrase)


def check_new_passphrase(secret: Secret, what: str = "new vault passphrase") -> Secret:
    """Refuse a new passphrase too short to resist guessing: it is all that protects the
    evidence if the encrypted private key file is copied. Existing keys still open with
    whatever passphrase they have; only setting one is checked."""
    value = secret.reveal()
    if len(value) < MIN_NEW_PASSPHRASE:
        raise ConfigError(f"the {what} is {len(value)} characters; use at least "
                          f"{MIN_NEW_PASSPHRASE} (a few random words is easiest), nothing was "
                          "written")
    return secret


def get_passphrase(*, env: str | None, file: str | None, prompt: bool, confirm: bool = False,
                   what: str = "vault passphrase", env_name: str = ENV_NAME) -> Secret:
    """Return the passphrase from exactly one source (see the module docstring).

    ``env`` is the setting's value (``None`` = unset), ``file`` the ``--passphrase-file``
    path, ``prompt`` whether asking on the terminal is allowed, ``confirm`` whether a prompted
    passphrase must be typed twice (for new or changed passphrases). ``env_name`` only names the
    setting in messages. Raises ``ConfigError`` (exit 2) when the sources are ambiguous, when
    none is available, or when the passphrase is empty.
    """
    if env is not None and file is not None:
        raise ConfigError(f"ambiguous {what}: both {env_name} and {FILE_OPTION} are given; "
                          f"unset {env_name} or drop {FILE_OPTION}")
    if env is not None:
        if env == "":
            raise ConfigError(f"{env_name} is empty; an empty passphrase is not allowed")
        return Secret(env)
    if file is not None:
        return _read_file(file, what)
    if prompt and sys.stdin is not None and sys.stdin.isatty():
        return _prompt(what, confirm)
    raise ConfigError(f"no {what} given: set {env_name}, pass {FILE_OPTION} FILE, "
                      "or run the command on a terminal to be prompted")
