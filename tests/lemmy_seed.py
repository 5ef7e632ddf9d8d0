"""Seed data for Lemmy-shaped and pict-rs-shaped test databases (see tests/data/*.sql).

One flagged file (``ID1``, content ``SHA``) has three pict-rs aliases: ``ALIAS`` (uploaded by
``uploader``), ``ALIAS2`` (a thumbnail the server made for a link post) and ``ALIAS3`` (pict-rs's
proxied copy of ``REMOTE_URL``). ``OTHER`` is an unrelated upload that must never show up.

The rows contain hostile text (markup, event handlers, bidi overrides, very long strings) to
check that it reaches the report escaped and inert.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import quote

import psycopg

from fsq.lemmy.pictrs_repo import encode_hash

DATA = Path(__file__).parent / "data"

HOST = "lemmy.example"
INSTANCE_URL = f"https://{HOST}"
REMOTE = "remote.example"

CONTENT = b"not an image, just test bytes for the flagged file"
SHA = hashlib.sha256(CONTENT).hexdigest()
MD5 = hashlib.md5(CONTENT).hexdigest()
SIZE = len(CONTENT)

ID1 = "01/93/4f/7a/b2/c0/7d/3e/9a/41/5b2c8d0e9f12.jpeg"        # UUIDv7 layout (0.5.7+)
ID_VAR = "01/93/4f/7a/b2/c1/00/11/22/33/445566778899.webp"
ID_OTHER = "0/1/8c1f0a5e-6d3b-4b9e-9a0e-2f4c5d6e7f80"               # 0.4-style layout

ALIAS = "cfef8df9-6bb5-4049-b7b0-5299814076d4.jpeg"
ALIAS2 = "7e1d2c3b-4a59-4687-9a8b-0c1d2e3f4a5b.jpeg"
ALIAS3 = "a1b2c3d4-e5f6-4711-8899-aabbccddeeff.jpeg"
OTHER = "xl8W7FZfk9.jpg"
REMOTE_URL = f"https://{REMOTE}/media/cat_100%.png?size=large&x=1"

UPLOADER_IPS = ("203.0.113.7", "198.51.100.23")
BYSTANDER_IP = "192.0.2.99"

XSS_TITLE = "\"><img src=x onerror=alert(1)><script>alert('t')</script>"
RLO = "\u202e"
LONG = "L" * 6000
HOSTILE_NAME = "<script>alert(document.cookie)</script>"
EVIL_LINK = '<a href="https://evil.example/x" onclick="steal()">click me</a>'
UA = "Mozilla/5.0 <b>bold</b> \u2066isolate\u2069 (X11)"


def image_url(alias: str, version: str, host: str = HOST) -> str:
    if version == "1.0":
        return f"https://{host}/api/v4/image/{alias}"
    return f"https://{host}/pictrs/image/{alias}"


def proxy_url(target: str, version: str, host: str = HOST) -> str:
    if version == "1.0":
        return f"https://{host}/api/v4/image/proxy?url={quote(target, safe='')}"
    return f"https://{host}/api/v3/image_proxy?url={quote(target, safe='')}"


def load_schema(url: str, name: str) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute((DATA / name).read_text(encoding="utf-8"))


def seed_pictrs(url: str) -> None:
    load_schema(url, "pictrs_0_5.sql")
    h1 = encode_hash(SHA, SIZE, 2)
    h2 = encode_hash(hashlib.sha256(b"other").hexdigest(), 5, 2)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("INSERT INTO hashes (hash, identifier, created_at) VALUES "
                  "(%s, %s, '2026-03-01 10:00:00'), (%s, %s, '2026-03-02 10:00:00')",
                  (h1, ID1, h2, ID_OTHER))
        for a in (ALIAS, ALIAS2, ALIAS3):
            c.execute("INSERT INTO aliases (alias, hash, token) VALUES (%s, %s, %s)",
                      (a, h1, "delete-token-" + a[:8]))
        c.execute("INSERT INTO aliases (alias, hash, token) VALUES (%s, %s, 'tok')", (OTHER, h2))
        c.execute("INSERT INTO variants (hash, variant, identifier) VALUES (%s, %s, %s)",
                  (h1, "thumbnail/256/webp", ID_VAR))
        c.execute("INSERT INTO proxies (url, alias) VALUES (%s, %s)", (REMOTE_URL, ALIAS3))
        c.execute("INSERT INTO details (identifier, json) VALUES (%s, %s)",
                  (ID1, '{"width": 640, "height": 480, "format": "jpeg"}'))


def seed_lemmy(url: str, version: str) -> dict[str, int]:
    """Load the schema for ``version`` ('0.19' or '1.0') and seed it. Returns row ids."""
    load_schema(url, "lemmy_1_0.sql" if version == "1.0" else "lemmy_0_19.sql")
    v1 = version == "1.0"
    actor = "ap_id" if v1 else "actor_id"
    pub = "published_at" if v1 else "published"
    ids: dict[str, int] = {}
    with psycopg.connect(url, autocommit=True) as c:
        # Remote instances and forks are not bound by Lemmy's own length limit on titles.
        c.execute("ALTER TABLE post ALTER COLUMN name TYPE text")

        def ins(table: str, **cols) -> int:
            names = ", ".join(cols)
            marks = ", ".join(["%s"] * len(cols))
            row = c.execute(f"INSERT INTO {table} ({names}) VALUES ({marks}) RETURNING id",
                            list(cols.values())).fetchone()
            return row[0]

        local = ins("instance", domain=HOST)
        remote = ins("instance", domain=REMOTE)
        ids["uploader"] = ins("person", name="uploader", display_name=HOSTILE_NAME,
                              avatar=image_url(ALIAS, version), instance_id=local, local=True,
                              **{actor: f"https://{HOST}/u/uploader"})
        ids["remote_guy"] = ins("person", name="remote_guy", display_name=f"{RLO}evil{RLO}",
                                instance_id=remote, local=False,
                                **{actor: f"https://{REMOTE}/u/remote_guy"})
        ids["bystander"] = ins("person", name="bystander", instance_id=local, local=True,
                               **{actor: f"https://{HOST}/u/bystander"})
        ids["reporter"] = ins("person", name="reporter", instance_id=local, local=True,
                              **{actor: f"https://{HOST}/u/reporter"})
        ids["lu_uploader"] = ins("local_user", person_id=ids["uploader"],
                                 email="uploader@mail.example")
        ids["lu_bystander"] = ins("local_user", person_id=ids["bystander"])
        for n, ip in enumerate(UPLOADER_IPS):
            c.execute(f"INSERT INTO login_token (token, user_id, ip, user_agent, {pub}) "
                      "VALUES (%s, %s, %s, %s, %s)",
                      (f"jwt-secret-{n}", ids["lu_uploader"], ip, UA,
                       f"2026-03-0{n + 1}T08:00:00Z"))
        c.execute("INSERT INTO login_token (token, user_id, ip, user_agent) "
                  "VALUES ('jwt-other', %s, %s, 'curl')", (ids["lu_bystander"], BYSTANDER_IP))
        comm_text = {"sidebar": "sidebar", "summary": "summary"} if v1 else \
            {"description": "description"}
        ids["community"] = ins("community", name="pics", title=f"{RLO}Pics{RLO} & more",
                               banner=image_url(ALIAS2, version), instance_id=local,
                               **{actor: f"https://{HOST}/c/pics"}, **comm_text)
        ids["remote_comm"] = ins("community", name="memes", title="Memes", instance_id=remote,
                                 local=False, **{actor: f"https://{REMOTE}/c/memes"})
        ids["post_upload"] = ins(
            "post", name=XSS_TITLE + RLO + "gnp.exe " + LONG, url=image_url(ALIAS, version),
            body=EVIL_LINK, creator_id=ids["uploader"], community_id=ids["community"],
            ap_id=f"https://{HOST}/post/1", **{pub: "2026-03-01T10:05:00Z"})
        ids["post_link"] = ins(
            "post", name="Interesting link", url=REMOTE_URL.replace("cat", "page"),
            thumbnail_url=image_url(ALIAS2, version) + "?format=webp&thumbnail=256",
            creator_id=ids["bystander"], community_id=ids["community"], removed=True,
            ap_id=f"https://{HOST}/post/2")
        ids["post_other"] = ins(
            "post", name="unrelated", url=image_url(OTHER, version),
            creator_id=ids["bystander"], community_id=ids["community"],
            ap_id=f"https://{HOST}/post/3")
        ids["post_otherhost"] = ins(
            "post", name="same alias, other instance",
            body=f"![x](https://other.example/pictrs/image/{ALIAS})",
            creator_id=ids["remote_guy"], community_id=ids["remote_comm"], local=False,
            ap_id=f"https://{REMOTE}/post/4")
        ids["comment_nested"] = ins(
            "comment", creator_id=ids["remote_guy"], post_id=ids["post_other"], local=False,
            content="<script>alert(2)</script> look "
                    f"![]({proxy_url(image_url(ALIAS, version), version)})",
            ap_id=f"https://{REMOTE}/comment/1")
        ids["comment_proxy"] = ins(
            "comment", creator_id=ids["remote_guy"], post_id=ids["post_other"], local=False,
            content=f"via proxy ![]({proxy_url(REMOTE_URL, version)}) {EVIL_LINK}",
            ap_id=f"https://{REMOTE}/comment/2", deleted=True)
        ids["comment_clean"] = ins(
            "comment", creator_id=ids["bystander"], post_id=ids["post_other"],
            content=f"nothing here but {image_url(OTHER, version)}",
            ap_id=f"https://{HOST}/comment/3")
        ids["pm"] = ins("private_message", creator_id=ids["uploader"],
                        recipient_id=ids["bystander"],
                        content=f"sending you this {image_url(ALIAS, version)}?thumbnail=64",
                        ap_id=f"https://{HOST}/private_message/1")
        ids["site"] = ins("site", name="Example", icon=image_url(OTHER, version),
                          instance_id=local, **{actor: f"https://{HOST}/"})
        c.execute("INSERT INTO custom_emoji (shortcode, image_url, alt_text) VALUES (%s,%s,%s)",
                  ("blobcat", image_url(ALIAS, version), "alt <i>text</i>"))
        ids["post_report"] = ins(
            "post_report", creator_id=ids["reporter"], post_id=ids["post_upload"],
            original_post_name="reported", original_post_url=image_url(ALIAS, version),
            reason=f"this is illegal {XSS_TITLE}")
        ids["comment_report"] = ins(
            "comment_report", creator_id=ids["reporter"], comment_id=ids["comment_nested"],
            original_comment_text=f"![]({proxy_url(image_url(ALIAS, version), version)})",
            reason="csam")
        # remote_guy is banned here; bystander's ban (1.0: with an expiry) has run out
        if v1:
            c.execute("INSERT INTO instance_actions (person_id, instance_id, received_ban_at) "
                      "VALUES (%s, %s, '2026-03-05T00:00:00Z')", (ids["remote_guy"], local))
            c.execute("INSERT INTO instance_actions (person_id, instance_id, received_ban_at, "
                      "ban_expires_at) VALUES (%s, %s, '2026-01-01T00:00:00Z', "
                      "'2026-01-02T00:00:00Z')", (ids["bystander"], local))
        else:
            c.execute("UPDATE person SET banned = true WHERE id = %s", (ids["remote_guy"],))
        if v1:
            c.execute("INSERT INTO local_image (pictrs_alias, person_id, published_at) "
                      "VALUES (%s, %s, '2026-03-01T10:00:00Z')", (ALIAS, ids["uploader"]))
            # as Lemmy 1.0 records a thumbnail it made: person_id = the post's creator
            c.execute("INSERT INTO local_image (pictrs_alias, person_id, thumbnail_for_post_id) "
                      "VALUES (%s, %s, %s)", (ALIAS2, ids["bystander"], ids["post_link"]))
            c.execute("INSERT INTO local_image (pictrs_alias, person_id) VALUES (%s, %s)",
                      (OTHER, ids["bystander"]))
        else:
            c.execute("INSERT INTO local_image (pictrs_alias, local_user_id, pictrs_delete_token,"
                      " published) VALUES (%s, %s, 'tok1', '2026-03-01T10:00:00Z')",
                      (ALIAS, ids["lu_uploader"]))
            c.execute("INSERT INTO local_image (pictrs_alias, pictrs_delete_token) "
                      "VALUES (%s, 'tok2')", (ALIAS2,))
            c.execute("INSERT INTO local_image (pictrs_alias, local_user_id, pictrs_delete_token)"
                      " VALUES (%s, %s, 'tok3')", (OTHER, ids["lu_bystander"]))
    return ids


# Rows that reference the flagged file, per route. The proxied-URL comment is found only when
# the pict-rs repo (which knows the proxies table) is readable.
EXPECTED_COMMON = {("post", "post_upload"), ("post", "post_link"),
                   ("comment", "comment_nested"), ("private_message", "pm"),
                   ("person", "uploader"), ("community", "community"),
                   ("post_report", "post_report"), ("comment_report", "comment_report")}
EXPECTED_REPO_ONLY = {("comment", "comment_proxy")}
NEVER = {("post", "post_other"), ("post", "post_otherhost"), ("comment", "comment_clean"),
         ("site", "site")}

KIND = {"uploader": "person", "remote_guy": "person", "bystander": "person",
        "reporter": "person", "community": "community", "remote_comm": "community",
        "post_upload": "post", "post_link": "post", "post_other": "post",
        "post_otherhost": "post", "comment_nested": "comment", "comment_proxy": "comment",
        "comment_clean": "comment", "pm": "private_message", "site": "site",
        "post_report": "post_report", "comment_report": "comment_report"}


def hit_names(hits, ids) -> set[tuple[str, str]]:
    """{(kind, seed name)} for a list of Hit objects or hit dicts."""
    by_id = {(KIND[name], v): name for name, v in ids.items() if name in KIND}
    out = set()
    for h in hits:
        kind, hid = (h["kind"], h["id"]) if isinstance(h, dict) else (h.kind, h.id)
        out.add((kind, by_id.get((kind, hid), f"?{hid}")))
    return out
