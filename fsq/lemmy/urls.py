"""Find pict-rs aliases in the URLs and texts Lemmy stores.

Lemmy never stores a pict-rs identifier; it stores URLs that name an *alias*. The forms it
writes (see docs: pictrs-lemmy reference):

* uploads, 0.18/0.19: ``https://HOST/pictrs/image/ALIAS`` (optionally
  ``?format=webp&thumbnail=256``); 1.0: ``https://HOST/api/v4/image/ALIAS``;
* the image proxy, 0.19.4+: ``https://HOST/api/v3/image_proxy?url=<urlencoded remote URL>``;
  1.0: ``https://HOST/api/v4/image/proxy?url=...``. A proxied URL names no alias: pict-rs
  remembers it in its ``proxies(url, alias)`` table. We return the decoded target URL, and
  look inside it too, since it may itself be (after one or more rounds of encoding) a pict-rs
  URL of this instance.

Such URLs appear as bare links (``post.url``, ``person.avatar``) and inside Markdown (post
bodies, comments, messages), possibly relative (``/pictrs/image/ALIAS``).

When the instance host is known, URLs on other hosts are ignored: another instance's alias names
another instance's file, even if the alias string is the same.

Everything here is a pure function on strings; the SQL layer uses ``like_pattern`` to pre-select
candidate rows (cheap, may over-match) and these functions to confirm each row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote, urlsplit

# Alias: one path segment. UUID + extension today, short random names + extension in old
# versions. Deliberately conservative: no '/', '?', '#', '%', whitespace or quotes.
_ALIAS = r"[A-Za-z0-9][A-Za-z0-9._~-]{0,254}"
ALIAS_RE = re.compile(rf"^{_ALIAS}$")

# A URL inside free text: absolute http(s) or a site-relative path in one of Lemmy's forms.
# Stops at whitespace, quotes, angle brackets, and Markdown's brackets/parentheses.
_URL_IN_TEXT = re.compile(
    r"""(?:https?://[^\s<>"'`()\[\]{}\\]+"""
    r"""|(?<![\w/.:-])/(?:pictrs/image/|api/v[34]/image)[^\s<>"'`()\[\]{}\\]*)""",
    re.IGNORECASE)

_PATH_FORMS = (
    ("pictrs", re.compile(rf"^/pictrs/image/({_ALIAS})/?$")),
    ("api-v4", re.compile(rf"^/api/v4/image/(?!proxy/?$)({_ALIAS})/?$")),
)
_PROXY_PATHS = {"/api/v3/image_proxy": "proxy-v3", "/api/v4/image/proxy": "proxy-v4"}

# Markdown/HTML leave these glued to the end of a URL more often than they belong to it.
_TRAILING = ".,;:!?*_~>"

MAX_NESTING = 4


@dataclass(frozen=True)
class ImageRef:
    """One image URL found in Lemmy data.

    ``alias`` is set for direct pict-rs URLs of this instance; ``proxied_url`` for image-proxy
    URLs (the decoded target). ``form`` names the URL form: pictrs | api-v4 | proxy-v3 |
    proxy-v4. ``url`` is the URL as found; ``via_proxy`` is True when an alias was found inside
    a proxied URL.
    """

    form: str
    url: str
    alias: str | None = None
    proxied_url: str | None = None
    via_proxy: bool = False


def normalize_host(value: str | None) -> str | None:
    """'https://Lemmy.Example:443/' or 'lemmy.example' -> 'lemmy.example' (port kept unless it is
    the scheme default)."""
    if not value:
        return None
    v = value.strip()
    if "://" not in v:
        v = "https://" + v
    try:
        parts = urlsplit(v)
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return None
    if not host:
        return None
    if port and not (parts.scheme == "https" and port == 443) \
            and not (parts.scheme == "http" and port == 80):
        return f"{host}:{port}"
    return host


def _host_of(parts) -> str | None:
    try:
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return None
    if port and not (parts.scheme == "https" and port == 443) \
            and not (parts.scheme == "http" and port == 80):
        return f"{host}:{port}"
    return host


def _decode_nested(value: str) -> str:
    """Undo repeated percent-encoding (``https%253A%252F%252F`` -> ``https://``)."""
    for _ in range(MAX_NESTING):
        if "://" in value[:16]:
            break
        decoded = unquote(value)
        if decoded == value:
            break
        value = decoded
    return value


def parse_image_url(url: str, instance_host: str | None = None,
                    _depth: int = 0) -> list[ImageRef]:
    """Refs in one URL: [] if it is not a Lemmy image URL (of ``instance_host``, when given).

    A proxy URL gives one ref with ``proxied_url`` and, if the proxied URL is itself a pict-rs
    URL of this instance, a second ref with its alias (``via_proxy``).
    """
    host = normalize_host(instance_host)
    url = url.strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    if parts.scheme and parts.scheme.lower() not in ("http", "https"):
        return []
    if parts.netloc:
        if host is not None and _host_of(parts) != host:
            return []
    elif not url.startswith("/"):
        return []
    path = unquote(parts.path) if "%" in parts.path else parts.path
    path = re.sub(r"/{2,}", "/", path)
    for form, rx in _PATH_FORMS:
        m = rx.match(path)
        if m:
            return [ImageRef(form=form, url=url, alias=m.group(1))]
    form = _PROXY_PATHS.get(path.rstrip("/"))
    if form is None:
        return []
    # parse_qs decodes one level; keep_blank_values so "url=" does not vanish silently.
    target = (parse_qs(parts.query, keep_blank_values=True).get("url") or [""])[0]
    target = _decode_nested(target).strip()
    if not target or _depth >= MAX_NESTING:
        return []
    refs = [ImageRef(form=form, url=url, proxied_url=target)]
    # Proxied pict-rs URLs are normally *remote* ones; without the instance host we cannot
    # tell ours from theirs, so only a known host (or a relative URL) yields an alias here.
    if host is not None or target.startswith("/"):
        for inner in parse_image_url(target, host, _depth + 1):
            if inner.alias:
                refs.append(ImageRef(form=inner.form, url=url, alias=inner.alias,
                                     via_proxy=True))
    return refs


def find_image_refs(text: str | None, instance_host: str | None = None) -> list[ImageRef]:
    """Every Lemmy image ref in free text (Markdown, HTML-ish, bare URL), in order."""
    if not text:
        return []
    out: list[ImageRef] = []
    for m in _URL_IN_TEXT.finditer(text):
        url = m.group(0).rstrip(_TRAILING)
        # Markdown links escape parentheses and HTML gives &amp; — undo the latter for queries.
        url = url.replace("&amp;", "&")
        out.extend(parse_image_url(url, instance_host))
    return out


def extract_aliases(text: str | None, instance_host: str | None = None) -> set[str]:
    """The set of aliases referenced (directly or through the image proxy) in ``text``."""
    return {r.alias for r in find_image_refs(text, instance_host) if r.alias}


def extract_proxied_urls(text: str | None, instance_host: str | None = None) -> set[str]:
    return {r.proxied_url for r in find_image_refs(text, instance_host) if r.proxied_url}


def same_url(a: str, b: str) -> bool:
    """Loose URL equality for proxied targets: scheme/host case and one trailing slash."""
    def norm(u: str) -> str:
        u = _decode_nested(u.strip())
        try:
            p = urlsplit(u)
        except ValueError:
            return u
        return f"{p.scheme.lower()}://{p.netloc.lower()}{p.path.rstrip('/') or '/'}" + \
            (f"?{p.query}" if p.query else "")
    return norm(a) == norm(b)


def is_alias(value: str) -> bool:
    return bool(ALIAS_RE.match(value))


# --- SQL LIKE ----------------------------------------------------------------------------------

def escape_like(fragment: str) -> str:
    """Escape LIKE's metacharacters with backslash (PostgreSQL's default ESCAPE)."""
    return fragment.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def like_pattern(fragment: str) -> str:
    """``%fragment%`` with ``%``, ``_`` and ``\\`` in the fragment matched literally."""
    return "%" + escape_like(fragment) + "%"


def alias_like_patterns(alias: str) -> list[str]:
    """Candidate patterns for rows mentioning ``alias``: plain, and percent-encoded once or twice
    (an alias inside a proxied URL). Over-matching is fine: rows are confirmed in Python."""
    pats = [like_pattern(alias)]
    enc = quote(alias, safe="")
    if enc != alias:
        pats.append(like_pattern(enc))
    return pats


def proxy_like_patterns(target_url: str) -> list[str]:
    """Patterns for rows that mention a proxied URL: as written, encoded once and twice."""
    once = quote(target_url, safe="")
    twice = quote(once, safe="")
    seen: list[str] = []
    for v in (target_url, once, twice, quote(target_url, safe="/:")):
        p = like_pattern(v)
        if p not in seen:
            seen.append(p)
    return seen


def image_url(instance_url: str, alias: str, schema: str | None = None) -> str:
    """The public URL Lemmy would write for ``alias`` (1.0 uses /api/v4/image/)."""
    base = instance_url.rstrip("/")
    if schema and schema.startswith("1."):
        return f"{base}/api/v4/image/{quote(alias, safe='')}"
    return f"{base}/pictrs/image/{quote(alias, safe='')}"
