"""Versioned SQLite schema.

Each entry of MIGRATIONS is applied once, in order, inside one transaction, and recorded in
``schema_migrations``; ``PRAGMA user_version`` mirrors the latest version. Never edit a
released migration: append a new one.

Times are TEXT in UTC ISO 8601 (``2026-11-21T19:25:50.123456Z``), produced by fsq.timeutil.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "initial schema", r"""
-- One row per (source, key) ever listed. status is the object's latest outcome:
--   clean | flagged | unreadable | error | skipped   (from scanning)
--   quarantined | released | missing                 (from acting)
CREATE TABLE objects (
    id          INTEGER PRIMARY KEY,
    source      TEXT NOT NULL,
    key         TEXT NOT NULL,
    size        INTEGER,
    mtime       REAL,
    sha256      TEXT,
    md5         TEXT,
    media_type  TEXT,
    status      TEXT NOT NULL DEFAULT 'pending',
    reason      TEXT,
    verdict_id  INTEGER REFERENCES verdicts(id),
    first_seen  TEXT NOT NULL,
    last_seen   TEXT NOT NULL,
    last_scan   INTEGER REFERENCES scan_runs(id),
    UNIQUE (source, key)
);
CREATE INDEX objects_sha256 ON objects(sha256);
CREATE INDEX objects_status ON objects(status);

-- One row per classification of a content hash under one configuration.
-- outcome: clean | flagged | unreadable | error
CREATE TABLE verdicts (
    id              INTEGER PRIMARY KEY,
    sha256          TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    outcome         TEXT NOT NULL,
    reason          TEXT,
    method          TEXT NOT NULL,          -- clip | hash-list | allowlist | unreadable-policy
    model_id        TEXT,
    concepts_digest TEXT,
    severity        TEXT,
    rule_version    TEXT,
    media_type      TEXT,
    width           INTEGER,
    height          INTEGER,
    frames          INTEGER,
    details         TEXT NOT NULL DEFAULT '{}' -- JSON: scores, adjustments, fired, per-frame
);
CREATE INDEX verdicts_lookup ON verdicts(sha256, model_id, concepts_digest, severity,
                                         rule_version);

CREATE TABLE scan_runs (
    id          INTEGER PRIMARY KEY,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    source      TEXT NOT NULL,
    mode        TEXT NOT NULL,               -- all | daemon | serve
    dry_run     INTEGER NOT NULL,
    status      TEXT NOT NULL DEFAULT 'running', -- running | finished | failed | interrupted
    counts      TEXT NOT NULL DEFAULT '{}',
    error       TEXT
);

-- Persistent per-source cursor of the daemon (high-water mark of listed mtimes).
CREATE TABLE cursors (
    source      TEXT PRIMARY KEY,
    value       REAL NOT NULL,
    updated_at  TEXT NOT NULL
);

-- Content that must never be flagged again (released false positives, admin allowlist).
CREATE TABLE allowlist (
    sha256      TEXT PRIMARY KEY,
    added_at    TEXT NOT NULL,
    reason      TEXT NOT NULL,
    incident_id INTEGER
);

-- One incident per content sha256.
-- state: flagged | quarantined | reported | cleared | purged | released
-- ("held" is derived from active holds, not stored.)
CREATE TABLE incidents (
    id               INTEGER PRIMARY KEY,
    sha256           TEXT NOT NULL UNIQUE,
    md5              TEXT,
    size             INTEGER,
    media_type       TEXT,
    width            INTEGER,
    height           INTEGER,
    state            TEXT NOT NULL,
    verdict_id       INTEGER REFERENCES verdicts(id),
    created_at       TEXT NOT NULL,
    quarantined_at   TEXT,
    reported_at      TEXT,
    report_reference TEXT,
    cleared_at       TEXT,
    cleared_by       TEXT,
    clear_reason     TEXT,
    clear_reference  TEXT,
    purged_at        TEXT,
    purge_reason     TEXT,
    released_at      TEXT,
    release_reason   TEXT,
    origin           TEXT NOT NULL DEFAULT 'scan'   -- scan | serve
);

-- One sealed copy of one storage key's bytes. The vault object names are derived from id
-- (random), so listing the vault reveals nothing. state:
--   sealing | stored | verified | source_removed | done   (the crash-safe move, in order)
--   rolled_back | released | purged
CREATE TABLE vault_entries (
    id            TEXT PRIMARY KEY,
    incident_id   INTEGER NOT NULL REFERENCES incidents(id),
    source        TEXT NOT NULL,
    key           TEXT NOT NULL,
    object_id     INTEGER REFERENCES objects(id),
    sha256        TEXT NOT NULL,       -- plaintext sha256 (expected)
    size          INTEGER,
    blob_sha256   TEXT,                -- sha256 of the sealed blob as stored
    key_sha256    TEXT,                -- sha256 of the wrapped data-key object as stored
    vault         TEXT NOT NULL,       -- vault URL at sealing time
    state         TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    retain_until  TEXT,                -- object-lock retention date applied, if any
    error         TEXT
);
CREATE INDEX vault_entries_incident ON vault_entries(incident_id);
CREATE INDEX vault_entries_state ON vault_entries(state);

CREATE TABLE holds (
    id          INTEGER PRIMARY KEY,
    incident_id INTEGER NOT NULL REFERENCES incidents(id),
    kind        TEXT NOT NULL,         -- statutory | voluntary | law-enforcement | litigation
    reason      TEXT NOT NULL,
    until       TEXT,
    created_at  TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    lifted_at   TEXT,
    lifted_by   TEXT,
    lift_reason TEXT
);
CREATE INDEX holds_incident ON holds(incident_id);

-- Aliases and other pict-rs/Lemmy facts learnt about an incident (cache for reports/purge).
CREATE TABLE identifier_aliases (
    identifier  TEXT NOT NULL,
    alias       TEXT NOT NULL,
    learnt_at   TEXT NOT NULL,
    via         TEXT NOT NULL,
    PRIMARY KEY (identifier, alias)
);

-- The audit log: append-only, hash-chained (see fsq.ledger.audit).
CREATE TABLE audit (
    seq          INTEGER PRIMARY KEY,
    ts           TEXT NOT NULL,
    actor        TEXT NOT NULL,
    tool_version TEXT NOT NULL,
    command      TEXT NOT NULL,
    action       TEXT NOT NULL,
    subject      TEXT NOT NULL,
    details      TEXT NOT NULL,
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
"""),
    (2, "custodian signatures on clearances, hold lifts and destructions", r"""
-- One signed decision that authorises destruction (fsq.custody.decisions). record is the exact
-- canonical JSON that was signed; purge re-verifies it and compares it with the other tables
-- and the audit chain, so editing any of them cannot authorise a purge.
CREATE TABLE custody_signatures (
    id          INTEGER PRIMARY KEY,
    kind        TEXT NOT NULL,         -- clearance | hold-lift | destruction
    incident_id INTEGER NOT NULL REFERENCES incidents(id),
    hold_id     INTEGER REFERENCES holds(id),
    record      TEXT NOT NULL,
    signature   TEXT NOT NULL,         -- base64 Ed25519 signature
    fingerprint TEXT NOT NULL,         -- custodian key that signed
    created_at  TEXT NOT NULL
);
CREATE INDEX custody_signatures_incident ON custody_signatures(incident_id, kind);
"""),
    (3, "review console: review state, queue indexes, audit subject index", r"""
-- Review console (fsq.review). review_state is the reviewer's latest decision:
--   needs_review | escalated | to_report | reported | kept | false_positive | cleared
-- (the lifecycle state stays in incidents.state). review_score caches the verdict's best
-- margin over its threshold for sorting; review_uploader caches the Lemmy uploader learnt by
-- linkage (NULL = not known yet).
ALTER TABLE incidents ADD COLUMN review_state TEXT NOT NULL DEFAULT 'needs_review';
ALTER TABLE incidents ADD COLUMN review_score REAL;
ALTER TABLE incidents ADD COLUMN review_uploader TEXT;
ALTER TABLE incidents ADD COLUMN reviewed_at TEXT;
ALTER TABLE incidents ADD COLUMN reviewed_by TEXT;
-- Incidents decided before the console existed start in the matching review state.
UPDATE incidents SET review_state = CASE state WHEN 'released' THEN 'false_positive'
    WHEN 'reported' THEN 'reported' WHEN 'cleared' THEN 'cleared' ELSE review_state END;
CREATE INDEX incidents_review_date ON incidents(review_state, created_at);
CREATE INDEX incidents_review_score ON incidents(review_state, review_score);
CREATE INDEX incidents_created ON incidents(created_at);
CREATE INDEX incidents_score ON incidents(review_score);
CREATE INDEX incidents_review_counts ON incidents(review_state, state);
-- Per-incident audit excerpts (reports, views, exports) without scanning the whole log.
CREATE INDEX audit_subject ON audit(subject, seq);
"""),
    (4, "content signals: PDQ per frame, hash banks", r"""
-- PDQ of every decoded still and sampled frame, by content sha256 (beside objects.sha256/md5).
-- frame: index in the file (0 for a still). Written by the scanner and `fsq serve`.
CREATE TABLE content_pdq (
    sha256      TEXT NOT NULL,
    frame       INTEGER NOT NULL,
    pdq         TEXT NOT NULL,          -- 64 lowercase hex digits
    quality     INTEGER NOT NULL,       -- 0..100; < 50 is never matched
    PRIMARY KEY (sha256, frame)
);

-- Named collections of signals. kind 'unsafe': a match flags without the model; 'safe': a
-- close match is clean without the model. 'confirmed' and 'safe' always exist.
CREATE TABLE banks (
    name        TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('unsafe', 'safe')),
    description TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL
);
INSERT INTO banks VALUES ('confirmed', 'unsafe',
    'content confirmed by a reviewer or added with fsq hashes add',
    strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
INSERT INTO banks VALUES ('safe', 'safe',
    'released false positives and content added with fsq hashes add --safe',
    strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));

-- One signal of one bank. signal_type: pdq | md5 | sha256 | video_md5 (python-threatexchange
-- names); signal_value: lowercase hex. origin: how it came (import:<sha256 of the list file>,
-- incident:<id>, file, release:<incident id>). note: text from an imported list (untrusted).
CREATE TABLE bank_signals (
    id           INTEGER PRIMARY KEY,
    bank         TEXT NOT NULL REFERENCES banks(name),
    signal_type  TEXT NOT NULL,
    signal_value TEXT NOT NULL,
    quality      INTEGER,
    incident_id  INTEGER REFERENCES incidents(id),
    origin       TEXT NOT NULL,
    note         TEXT,
    added_at     TEXT NOT NULL,
    UNIQUE (bank, signal_type, signal_value)
);
CREATE INDEX bank_signals_value ON bank_signals(signal_type, signal_value);

-- Bumped by every change to the banks, so a scanner or server reloads its in-memory PDQ index
-- only when something changed (one row read instead of counting a million).
CREATE TABLE bank_generation (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    generation  INTEGER NOT NULL
);
INSERT INTO bank_generation VALUES (1, 0);
CREATE TRIGGER bank_signals_added AFTER INSERT ON bank_signals
BEGIN UPDATE bank_generation SET generation = generation + 1; END;
CREATE TRIGGER bank_signals_removed AFTER DELETE ON bank_signals
BEGIN UPDATE bank_generation SET generation = generation + 1; END;
CREATE TRIGGER bank_signals_changed AFTER UPDATE ON bank_signals
BEGIN UPDATE bank_generation SET generation = generation + 1; END;
CREATE TRIGGER banks_changed AFTER UPDATE ON banks
BEGIN UPDATE bank_generation SET generation = generation + 1; END;
"""),
    (5, "lemmy actions", r"""
-- One row per moderation action sent (or attempted) through Lemmy's API by `fsq lemmy ...`.
-- state: sealing (evidence being preserved) | sent (request on the wire; outcome unknown if it
-- stays so) | done | failed. request is the exact call minus secrets (JSON: version, method,
-- path, body); evidence lists every file the action would destroy and where it was preserved;
-- snapshot is the linkage (target rows, reports, uploader, login IPs) taken before the call,
-- snapshot_sha256 its canonical-JSON hash (also in the audit log).
CREATE TABLE lemmy_actions (
    id              INTEGER PRIMARY KEY,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    action          TEXT NOT NULL,   -- remove-post | remove-comment | ban | community-ban |
                                     -- purge-post | purge-comment | purge-person
    target_kind     TEXT NOT NULL,   -- post | comment | person
    target_id       INTEGER NOT NULL,
    incident_id     INTEGER REFERENCES incidents(id),   -- the triggering incident, if any
    lemmy_version   TEXT,
    reason          TEXT NOT NULL,
    request         TEXT NOT NULL,
    evidence        TEXT NOT NULL DEFAULT '[]',
    snapshot        TEXT,
    snapshot_sha256 TEXT,
    state           TEXT NOT NULL,
    http_status     INTEGER,
    response        TEXT,            -- Lemmy object ids from the answer (JSON), never the body
    error           TEXT
);
CREATE INDEX lemmy_actions_incident ON lemmy_actions(incident_id);
CREATE INDEX lemmy_actions_target ON lemmy_actions(target_kind, target_id);

-- Incidents opened to preserve files a Lemmy action would destroy (origin 'lemmy-action')
-- point at the incident that triggered the action.
ALTER TABLE incidents ADD COLUMN linked_incident_id INTEGER REFERENCES incidents(id);
"""),
    (6, "verdict settings digest, legacy flags", r"""
-- The digest of the decision settings (model, weights, concept set, severity, rule version)
-- that produced a model verdict; see fsq.ledger.stale. NULL for verdicts from before.
ALTER TABLE verdicts ADD COLUMN settings_digest TEXT;

-- History imported from another tool (fedi-safety's lemmy_safety.db): never a finding, only a
-- note. outcome: queued (file present: the next scan decides it) | already-scanned (fsq has
-- its own verdict) | removed (gone, the old tool had flagged it: it deleted it) | gone (gone,
-- not flagged by the old tool) | invalid (the key could not be a storage key).
CREATE TABLE legacy_flags (
    id          INTEGER PRIMARY KEY,
    tool        TEXT NOT NULL,
    source      TEXT NOT NULL,
    key         TEXT NOT NULL,
    legacy_id   INTEGER,
    nsfw        INTEGER,
    csam        INTEGER,
    recorded_at TEXT,               -- when the old tool recorded it (UTC ISO 8601, or as given)
    imported_at TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    note        TEXT NOT NULL,
    UNIQUE (tool, source, key)
);
"""),
    (7, "content sealed into another content's incident (pict-rs variants)", r"""
-- A variant or motion file of a flagged pict-rs original is flagged content too
-- (fsq.engine.variants): its verdict (method 'variant-of') names the original's verdict, and
-- its bytes are sealed into the original's incident, not an incident of their own. One row
-- per such content sha256 and incident. role: variant | motion; identifier/variant: what the
-- pict-rs repo said; verdict_id: the variant's own verdict row.
CREATE TABLE incident_content (
    incident_id     INTEGER NOT NULL REFERENCES incidents(id),
    sha256          TEXT NOT NULL,
    role            TEXT NOT NULL,
    original_sha256 TEXT NOT NULL,
    identifier      TEXT,
    variant         TEXT,
    verdict_id      INTEGER REFERENCES verdicts(id),
    added_at        TEXT NOT NULL,
    PRIMARY KEY (incident_id, sha256)
);
CREATE INDEX incident_content_sha256 ON incident_content(sha256);
"""),
    (9, "attestations and peers", r"""
-- Shared verdicts (fsq.exchange, docs/federation.md).
-- A local human (or, if published, model) decision about content; statement_id is set once
-- a signed statement covers it. ref makes derivation from the audit log idempotent.
CREATE TABLE attest_decisions (
    id           INTEGER PRIMARY KEY,
    sha256       TEXT NOT NULL,
    md5          TEXT,
    verdict      TEXT NOT NULL,            -- safe | unsafe
    method       TEXT NOT NULL,            -- human | model
    reviewer     TEXT,
    incident_id  INTEGER,
    origin       TEXT NOT NULL,            -- release | reported | console | model
    ref          TEXT NOT NULL,
    decided_at   TEXT NOT NULL,
    details      TEXT NOT NULL DEFAULT '{}',
    statement_id TEXT,
    UNIQUE (origin, ref)
);
CREATE INDEX attest_decisions_pending ON attest_decisions(statement_id, sha256);

-- Statements this instance signed; seq is the feed cursor (never reused).
CREATE TABLE attest_statements (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,     -- sha256 of the payload
    sha256       TEXT NOT NULL,
    verdict      TEXT NOT NULL,
    method       TEXT NOT NULL,
    time         TEXT NOT NULL,
    supersedes   TEXT,
    keyid        TEXT NOT NULL,
    envelope     TEXT NOT NULL
);
CREATE INDEX attest_statements_sha256 ON attest_statements(sha256);

-- Trusted peers: the key is pinned when the peer is added.
CREATE TABLE peers (
    id           INTEGER PRIMARY KEY,
    url          TEXT NOT NULL UNIQUE,
    keyid        TEXT NOT NULL,
    public_key   TEXT NOT NULL,
    added_at     TEXT NOT NULL,
    cursor       TEXT NOT NULL DEFAULT '0',
    last_pull_at TEXT,
    last_ok_at   TEXT,
    last_error   TEXT
);

-- Verified statements received from peers.
CREATE TABLE peer_statements (
    id           INTEGER PRIMARY KEY,
    peer_id      INTEGER NOT NULL REFERENCES peers(id) ON DELETE CASCADE,
    statement_id TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    md5          TEXT,
    verdict      TEXT NOT NULL,
    method       TEXT NOT NULL,
    time         TEXT NOT NULL,
    expires      TEXT,
    supersedes   TEXT,
    revoked_by   TEXT,
    received_at  TEXT NOT NULL,
    via          TEXT NOT NULL,            -- pull | import
    cursor       TEXT,                     -- its position in the peer's feed (pull)
    envelope     TEXT NOT NULL,
    UNIQUE (peer_id, statement_id)
);
CREATE INDEX peer_statements_sha256 ON peer_statements(sha256);
CREATE INDEX peer_statements_supersedes ON peer_statements(peer_id, supersedes);
CREATE INDEX peer_statements_subject ON peer_statements(peer_id, sha256, time);

-- What was refused, and why (statements and whole responses).
CREATE TABLE peer_rejections (
    id           INTEGER PRIMARY KEY,
    peer_id      INTEGER REFERENCES peers(id) ON DELETE CASCADE,
    at           TEXT NOT NULL,
    reason       TEXT NOT NULL,
    cursor       TEXT,
    statement_id TEXT,
    data_sha256  TEXT
);
"""),
    (11, "stored image embeddings for rescore, int8 approvals", r"""
-- The image embedding of each frame the model classified, for `fsq rescore` (re-deciding
-- under another concept set or severity without decoding or running the image tower).
-- vectors: n_frames x dim float16 little-endian, L2-normalised, in sampled-frame order.
-- Only content whose model verdict was clean is kept: an embedding of flagged content is
-- derived from evidence and is deleted when any flagged verdict or incident is recorded for
-- that sha256 (docs/threat-model.md "Stored embeddings").
CREATE TABLE embeddings (
    sha256      TEXT NOT NULL,
    model_id    TEXT NOT NULL,
    precision   TEXT,
    n_frames    INTEGER NOT NULL,
    dim         INTEGER NOT NULL,
    vectors     BLOB NOT NULL,
    verdict_id  INTEGER REFERENCES verdicts(id),
    created_at  TEXT NOT NULL,
    PRIMARY KEY (sha256, model_id)
) WITHOUT ROWID;

-- `fsq model check`: int8 (ONNX Runtime, dynamic, per-channel) compared with torch fp32 on the
-- admin's own files. The latest row per (checkpoint_sha256, precision) decides whether
-- `--precision int8` may run for that checkpoint; approved: 1 passed, 0 refused.
CREATE TABLE model_approvals (
    id                INTEGER PRIMARY KEY,
    checkpoint_sha256 TEXT NOT NULL,
    model_id          TEXT NOT NULL,
    precision         TEXT NOT NULL,
    runtime           TEXT NOT NULL,
    approved          INTEGER NOT NULL,
    checked_at        TEXT NOT NULL,
    details           TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX model_approvals_lookup ON model_approvals(checkpoint_sha256, precision);
"""),
]

LATEST = MIGRATIONS[-1][0]
