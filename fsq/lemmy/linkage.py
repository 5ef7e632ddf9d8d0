"""Link a stored file to the pict-rs aliases, Lemmy rows and accounts behind it.

Given an incident's content SHA-256 and the storage keys that held it, try every configured
source and say, for each, whether it was used, unavailable (and why) or not configured:

1. ``cache`` - aliases learnt earlier, kept in the state DB table ``identifier_aliases``;
2. ``pictrs-repo`` - the pict-rs 0.5 PostgreSQL repo (FSQ_PICTRS_DATABASE_URL): identifier ->
   hash -> aliases, variants, motion file, proxied URLs; results are cached;
3. ``pictrs-api`` - pict-rs's internal API (FSQ_PICTRS_URL + FSQ_PICTRS_API_KEY), for instances
   without repo access: asks ``/internal/identifier`` for each alias in Lemmy's ``local_image``
   (once; cached) and ``/internal/aliases`` for the siblings of a found alias;
4. ``lemmy-db`` - the Lemmy database (FSQ_LEMMY_DATABASE_URL): uploaders with login IPs, and
   every row referencing an alias.

A failing source never stops the report: its reason is recorded (secrets masked) and the rest
goes on. ``orphan`` is True only when we know: pict-rs has no record of the file, or Lemmy was
searched for its aliases and nothing references them; None means "could not tell".
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass, field
from typing import Any

from fsq.errors import ExternalError
from fsq.lemmy import pictrs_api, urls
from fsq.lemmy.lemmy_db import Hit, LemmyDB, Upload
from fsq.lemmy.pictrs_repo import PictrsRepo, RepoLookup, identifier_candidates

LABELS = {
    "cache": "identifier cache (state database)",
    "pictrs-repo": "pict-rs repo (PostgreSQL, FSQ_PICTRS_DATABASE_URL)",
    "pictrs-api": "pict-rs internal API (FSQ_PICTRS_URL, FSQ_PICTRS_API_KEY)",
    "lemmy-db": "Lemmy database (FSQ_LEMMY_DATABASE_URL)",
}


@dataclass
class SourceState:
    name: str
    status: str          # used | unavailable | not-configured | not-needed
    detail: str = ""

    @property
    def label(self) -> str:
        return LABELS.get(self.name, self.name)


@dataclass
class Linkage:
    sha256: str
    keys: list[str]
    aliases: dict[str, list[str]] = field(default_factory=dict)   # storage key -> aliases
    alias_via: dict[str, str] = field(default_factory=dict)       # alias -> route that found it
    repo: list[RepoLookup] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)
    uploads: list[Upload] = field(default_factory=list)
    lemmy_schema: str | None = None
    instance_host: str | None = None
    sources: list[SourceState] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    orphan: bool | None = None
    orphan_reason: str | None = None

    @property
    def all_aliases(self) -> list[str]:
        out: dict[str, None] = {}
        for key in self.keys:
            for a in self.aliases.get(key, []):
                out[a] = None
        return list(out)

    @property
    def proxied_urls(self) -> list[str]:
        return list(dict.fromkeys(p["url"] for r in self.repo for p in r.proxies))

    @property
    def sources_used(self) -> list[str]:
        return [s.name for s in self.sources if s.status == "used"]

    @property
    def sources_unavailable(self) -> list[tuple[str, str]]:
        return [(s.name, s.detail) for s in self.sources if s.status == "unavailable"]

    @property
    def any_configured(self) -> bool:
        return any(s.status != "not-configured" for s in self.sources if s.name != "cache")

    def problems(self) -> list[str]:
        """Why linkage is incomplete: failed sources and missing configuration that matters.

        A pict-rs route left unconfigured is no problem when the other one answered."""
        out = [f"{LABELS.get(n, n)} unavailable: {d}" for n, d in self.sources_unavailable]
        lemmy = self.state("lemmy-db")
        if lemmy is not None and lemmy.status == "not-configured":
            out.append("Lemmy database not configured (set FSQ_LEMMY_DATABASE_URL): no posts, "
                       "comments or uploader can be named")
        pictrs = [self.state("pictrs-repo"), self.state("pictrs-api")]
        if any(not self.aliases.get(k) for k in self.keys) and all(
                s is not None and s.status == "not-configured" for s in pictrs):
            out.append("no pict-rs source configured (set FSQ_PICTRS_DATABASE_URL, or "
                       "FSQ_PICTRS_URL and FSQ_PICTRS_API_KEY): the stored file cannot be "
                       "mapped to its aliases")
        return out

    @property
    def complete(self) -> bool:
        return not self.problems()

    def state(self, name: str) -> SourceState | None:
        for s in self.sources:
            if s.name == name:
                return s
        return None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for r, rd in zip(self.repo, d["repo"]):
            rd["sha256_check"] = r.sha256_check(self.sha256)
        for s, sd in zip(self.sources, d["sources"]):
            sd["label"] = s.label
        d["all_aliases"] = self.all_aliases
        d["proxied_urls"] = self.proxied_urls
        d["sources_used"] = self.sources_used
        d["sources_unavailable"] = [list(x) for x in self.sources_unavailable]
        d["problems"] = self.problems()
        return d


def _add_alias(link: Linkage, key: str, alias: str, via: str) -> None:
    lst = link.aliases.setdefault(key, [])
    if alias not in lst:
        lst.append(alias)
    link.alias_via.setdefault(alias, via)


def link_incident(state: sqlite3.Connection, sha256: str, keys: list[str], settings: Any
                  ) -> Linkage:
    """Run every configured linkage source for the stored file(s) ``keys``."""
    link = Linkage(sha256=sha256, keys=list(dict.fromkeys(keys)))
    link.instance_host = urls.normalize_host(getattr(settings, "instance_url", None))
    cands = {k: identifier_candidates(k) for k in link.keys}

    # 1. cache
    def from_cache(via_name: str) -> int:
        n = 0
        cached = pictrs_api.cache_get(state, [c for cs in cands.values() for c in cs])
        for key, cs in cands.items():
            for c in cs:
                for a in cached.get(c, []):
                    if a not in link.aliases.get(key, []):
                        _add_alias(link, key, a, via_name)
                        n += 1
        return n

    n = from_cache("cache")
    link.sources.append(SourceState("cache", "used" if n else "not-needed",
                                    f"{n} alias(es) learnt earlier" if n else "nothing cached"))

    # 2. pict-rs repo
    repo_ok = False
    url = getattr(settings, "pictrs_database_url", None)
    if not url:
        link.sources.append(SourceState("pictrs-repo", "not-configured",
                                        "FSQ_PICTRS_DATABASE_URL is not set"))
    else:
        try:
            with PictrsRepo(url) as repo:
                found = 0
                for key in link.keys:
                    r = repo.lookup(key)
                    if r is None:
                        link.notes.append(f"pict-rs repo has no record of stored file {key}")
                        continue
                    found += 1
                    link.repo.append(r)
                    for a in r.aliases:
                        _add_alias(link, key, a, "pictrs-repo")
                    pictrs_api.cache_put(state, [(r.identifier, a) for a in r.aliases],
                                         pictrs_api.VIA_REPO)
                    if r.sha256_check(sha256) == "mismatch":
                        link.notes.append(
                            f"pict-rs records SHA-256 {r.decoded.sha256 if r.decoded else '?'} "
                            f"for {key}, not the incident's {sha256}: the file changed after "
                            "pict-rs stored it, or the key was reused")
            repo_ok = True
            link.sources.append(SourceState("pictrs-repo", "used",
                                            f"{found} of {len(link.keys)} stored file(s) found"))
        except ExternalError as exc:
            link.sources.append(SourceState("pictrs-repo", "unavailable", exc.message))

    # 3. Lemmy (opened now: the API route needs its local_image aliases)
    db: LemmyDB | None = None
    lurl = getattr(settings, "lemmy_database_url", None)
    lemmy_error: str | None = None
    if lurl:
        try:
            db = LemmyDB(lurl)
            link.lemmy_schema = db.schema.version
            if link.instance_host is None:
                dom = db.local_domain()
                link.instance_host = urls.normalize_host(dom)
                if dom:
                    link.notes.append(f"instance host {dom} taken from the Lemmy database "
                                      "(set FSQ_INSTANCE_URL to choose it)")
        except ExternalError as exc:
            lemmy_error = exc.message

    try:
        # 4. pict-rs API
        purl, key_ = getattr(settings, "pictrs_url", None), getattr(settings, "pictrs_api_key",
                                                                      None)
        missing = [k for k in link.keys if not link.aliases.get(k)]
        if not purl and not key_:
            link.sources.append(SourceState("pictrs-api", "not-configured",
                                            "FSQ_PICTRS_URL is not set"))
        elif not purl or not key_:
            link.sources.append(SourceState(
                "pictrs-api", "unavailable",
                "FSQ_PICTRS_API_KEY is not set" if purl else "FSQ_PICTRS_URL is not set"))
        elif not missing:
            link.sources.append(SourceState("pictrs-api", "not-needed",
                                            "aliases already known"))
        elif db is None:
            link.sources.append(SourceState(
                "pictrs-api", "unavailable",
                "needs the Lemmy database to list local_image aliases"
                + (" (which is unavailable)" if lurl else "; set FSQ_LEMMY_DATABASE_URL")))
        else:
            try:
                _api_route(state, link, db, pictrs_api.PictrsApi(purl, key_), cands, missing)
            except ExternalError as exc:
                link.sources.append(SourceState("pictrs-api", "unavailable", exc.message))

        # 5. Lemmy search
        if not lurl:
            link.sources.append(SourceState("lemmy-db", "not-configured",
                                            "FSQ_LEMMY_DATABASE_URL is not set"))
        elif db is None:
            link.sources.append(SourceState("lemmy-db", "unavailable", lemmy_error or ""))
        else:
            try:
                _lemmy_route(link, db)
                link.sources.append(SourceState(
                    "lemmy-db", "used",
                    f"schema {db.schema.version}; {len(link.hits)} referencing row(s), "
                    f"{len(link.uploads)} upload record(s)"))
            except ExternalError as exc:
                link.sources.append(SourceState("lemmy-db", "unavailable", exc.message))
    finally:
        if db is not None:
            db.close()

    # Also remember aliases under the storage key itself (it differs from the pict-rs identifier
    # when the scan root was above the store root): `fsq purge` looks them up by key.
    for key, aliases in link.aliases.items():
        by_via: dict[str, list[tuple[str, str]]] = {}
        for a in aliases:
            via = link.alias_via.get(a, "cache")
            by_via.setdefault(via if via != "cache" else "linkage", []).append((key, a))
        for via, pairs in by_via.items():
            pictrs_api.cache_put(state, pairs, via)

    _decide_orphan(link, repo_ok)
    return link


def _api_route(state: sqlite3.Connection, link: Linkage, db: LemmyDB, api: pictrs_api.PictrsApi,
               cands: dict[str, list[str]], missing: list[str]) -> None:
    local = db.local_image_aliases()
    counts = pictrs_api.build_identifier_map(state, api, local)
    before = {k: len(link.aliases.get(k, [])) for k in link.keys}
    # re-read the cache, now filled
    cached = pictrs_api.cache_get(state, [c for k in missing for c in cands[k]])
    for key in missing:
        for c in cands[key]:
            for a in cached.get(c, []):
                _add_alias(link, key, a, "pictrs-api")
    # siblings: other aliases of the same hash (e.g. re-uploads, proxied copies)
    for key in missing:
        for a in list(link.aliases.get(key, [])):
            sib = api.aliases(a) or []
            ident = next((c for c in cands[key] if a in cached.get(c, [])), None)
            new = [s for s in sib if s not in link.aliases.get(key, [])]
            for s in new:
                _add_alias(link, key, s, "pictrs-api")
            if ident and new:
                pictrs_api.cache_put(state, [(ident, s) for s in new], pictrs_api.VIA_API)
    found = sum(1 for k in missing if len(link.aliases.get(k, [])) > before[k])
    link.sources.append(SourceState(
        "pictrs-api", "used",
        f"{len(local)} local_image alias(es): {counts['cached']} cached, {counts['asked']} asked "
        f"({counts['unknown']} unknown to pict-rs); {found} of {len(missing)} stored file(s) "
        "mapped"))
    if found < len(missing):
        link.notes.append("the pict-rs API maps only originals that Lemmy recorded in its image "
                          "table; variants, motion files and files Lemmy never recorded cannot "
                          "be mapped this way (use FSQ_PICTRS_DATABASE_URL)")


def _lemmy_route(link: Linkage, db: LemmyDB) -> None:
    aliases = link.all_aliases
    proxied = link.proxied_urls
    if not aliases and not proxied:
        link.notes.append("no pict-rs alias is known for the stored file(s), so Lemmy could not "
                          "be searched for references")
        return
    link.uploads = db.uploads(aliases)
    post_ids = [u.thumbnail_for_post_id for u in link.uploads if u.thumbnail_for_post_id]
    link.hits, notes = db.references(aliases, proxied, link.instance_host, post_ids)
    link.notes += notes
    if db.schema.image_table is None:
        link.notes.append(f"Lemmy schema {db.schema.version} has no image table: uploaders "
                          "cannot be named")


def _decide_orphan(link: Linkage, repo_ok: bool) -> None:
    if link.hits:
        link.orphan = False
        return
    searched = "lemmy-db" in link.sources_used and (link.all_aliases or link.proxied_urls)
    if searched:
        link.orphan = True
        who = [u for u in link.uploads if u.person]
        link.orphan_reason = ("no Lemmy post, comment, message, profile, community, site, "
                              "emoji or report references its aliases"
                              + (" (an upload record still names the uploader)" if who else ""))
    elif repo_ok and not link.repo and link.keys:
        link.orphan = True
        link.orphan_reason = "pict-rs has no record of the stored file: nothing can reference it"
