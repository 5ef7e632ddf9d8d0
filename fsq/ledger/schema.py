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
]

LATEST = MIGRATIONS[-1][0]
