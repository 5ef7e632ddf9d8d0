"""Alias extraction from every URL form Lemmy writes (pure functions, table tests)."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from fsq.lemmy import urls

A = "cfef8df9-6bb5-4049-b7b0-5299814076d4.jpeg"
OLD = "xl8W7FZfk9.jpg"
H = "lemmy.example"
REMOTE = "https://remote.example/pics/cat.png?x=1&y=2"


@pytest.mark.parametrize("text, host, expected", [
    # 0.18/0.19 uploads
    (f"https://{H}/pictrs/image/{A}", H, {A}),
    (f"https://{H}/pictrs/image/{A}?format=webp&thumbnail=256", H, {A}),
    (f"https://{H}/pictrs/image/{OLD}", H, {OLD}),
    (f"http://{H.upper()}/pictrs/image/{A}", H, {A}),
    (f"https://{H}:443/pictrs/image/{A}", H, {A}),
    # 1.0 uploads
    (f"https://{H}/api/v4/image/{A}", H, {A}),
    (f"https://{H}/api/v4/image/{A}?thumbnail=128", H, {A}),
    # other host ignored when the instance host is known, accepted when it is not
    (f"https://other.example/pictrs/image/{A}", H, set()),
    (f"https://other.example/pictrs/image/{A}", None, {A}),
    (f"https://{H}:8443/pictrs/image/{A}", H, set()),
    # relative, inside Markdown
    (f"look ![x](/pictrs/image/{A}) here", H, {A}),
    (f"![cat](https://{H}/pictrs/image/{A} \"title\")", H, {A}),
    (f"[link](https://{H}/pictrs/image/{A}).", H, {A}),
    (f"<img src=\"https://{H}/pictrs/image/{A}\">", H, {A}),
    (f"two: https://{H}/pictrs/image/{A}, https://{H}/api/v4/image/{OLD}", H, {A, OLD}),
    # proxy of our own pict-rs URL (nested encoding, one and two rounds)
    (f"https://{H}/api/v3/image_proxy?url="
     f"{quote(f'https://{H}/pictrs/image/{A}', safe='')}", H, {A}),
    (f"https://{H}/api/v4/image/proxy?url="
     f"{quote(quote(f'https://{H}/pictrs/image/{A}', safe=''), safe='')}", H, {A}),
    # proxy of a remote URL names no alias
    (f"https://{H}/api/v3/image_proxy?url={quote(REMOTE, safe='')}", H, set()),
    # ...and a proxied remote pict-rs URL is theirs, not ours, without a host to compare
    (f"https://{H}/api/v3/image_proxy?url="
     f"{quote(f'https://remote.example/pictrs/image/{A}', safe='')}", None, set()),
    # things that are not image URLs
    (f"https://{H}/post/12", H, set()),
    (f"https://{H}/pictrs/image/", H, set()),
    (f"https://{H}/pictrs/image/{A}/extra", H, set()),
    (f"https://{H}/api/v4/image/proxy", H, set()),
    (f"ftp://{H}/pictrs/image/{A}", H, set()),
    (f"prefix/pictrs/image/{A}", H, set()),
    ("", H, set()),
    (None, H, set()),
])
def test_extract_aliases(text, host, expected):
    assert urls.extract_aliases(text, host) == expected


@pytest.mark.parametrize("text, expected", [
    (f"https://{H}/api/v3/image_proxy?url={quote(REMOTE, safe='')}", {REMOTE}),
    (f"https://{H}/api/v4/image/proxy?url={quote(REMOTE, safe='')}", {REMOTE}),
    (f"https://{H}/api/v3/image_proxy?url={quote(quote(REMOTE, safe=''), safe='')}", {REMOTE}),
    (f"![a](https://{H}/api/v3/image_proxy?url={quote(REMOTE, safe='')})", {REMOTE}),
    (f"https://other.example/api/v3/image_proxy?url={quote(REMOTE, safe='')}", set()),
    (f"https://{H}/api/v3/image_proxy?url=", set()),
    (f"https://{H}/api/v3/image_proxy", set()),
])
def test_extract_proxied_urls(text, expected):
    assert urls.extract_proxied_urls(text, H) == expected


def test_ref_forms():
    refs = urls.find_image_refs(
        f"https://{H}/pictrs/image/{A} https://{H}/api/v4/image/{A} "
        f"https://{H}/api/v3/image_proxy?url={quote(f'https://{H}/pictrs/image/{A}', safe='')}",
        H)
    assert [(r.form, r.alias, r.via_proxy) for r in refs] == [
        ("pictrs", A, False), ("api-v4", A, False), ("proxy-v3", None, False),
        ("pictrs", A, True)]


@pytest.mark.parametrize("value, expected", [
    ("https://Lemmy.Example/", "lemmy.example"),
    ("lemmy.example", "lemmy.example"),
    ("https://lemmy.example:443", "lemmy.example"),
    ("http://lemmy.example:8536", "lemmy.example:8536"),
    ("", None),
    (None, None),
])
def test_normalize_host(value, expected):
    assert urls.normalize_host(value) == expected


@pytest.mark.parametrize("fragment, pattern", [
    ("abc.jpeg", "%abc.jpeg%"),
    ("a_b%c", "%a\\_b\\%c%"),
    ("back\\slash", "%back\\\\slash%"),
])
def test_like_pattern(fragment, pattern):
    assert urls.like_pattern(fragment) == pattern


def test_proxy_like_patterns_cover_encodings():
    pats = urls.proxy_like_patterns(REMOTE)
    assert urls.like_pattern(REMOTE) in pats
    assert urls.like_pattern(quote(REMOTE, safe="")) in pats
    assert urls.like_pattern(quote(quote(REMOTE, safe=""), safe="")) in pats


def test_same_url():
    assert urls.same_url("HTTPS://Remote.Example/a/", "https://remote.example/a")
    assert urls.same_url(quote(REMOTE, safe=""), REMOTE)
    assert not urls.same_url("https://remote.example/a", "https://remote.example/b")


def test_image_url():
    assert urls.image_url("https://lemmy.example/", A, "0.19.4") == \
        f"https://lemmy.example/pictrs/image/{A}"
    assert urls.image_url("https://lemmy.example", A, "1.0") == \
        f"https://lemmy.example/api/v4/image/{A}"
