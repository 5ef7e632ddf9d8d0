-- pict-rs 0.5 PostgreSQL repo: the tables and columns fsq reads, written from the documented
-- names (docs: pictrs-lemmy reference, "pict-rs metadata repo"). Not pict-rs's own migrations.
CREATE TABLE hashes (
    hash              text PRIMARY KEY,          -- base64(sha256 || 6-byte BE length || format)
    identifier        text NOT NULL UNIQUE,
    motion_identifier text,
    created_at        timestamp NOT NULL DEFAULT now(),
    blurhash          text
);
CREATE TABLE variants (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    hash       text NOT NULL REFERENCES hashes(hash) ON DELETE CASCADE,
    variant    text NOT NULL,
    identifier text NOT NULL,
    accessed   timestamp NOT NULL DEFAULT now(),
    UNIQUE (hash, variant)
);
CREATE TABLE aliases (
    alias text PRIMARY KEY,
    hash  text NOT NULL REFERENCES hashes(hash) ON DELETE CASCADE,
    token text NOT NULL
);
CREATE TABLE details (
    identifier text PRIMARY KEY,
    json       jsonb NOT NULL
);
CREATE TABLE proxies (
    url      text PRIMARY KEY,
    alias    text NOT NULL REFERENCES aliases(alias) ON DELETE CASCADE,
    accessed timestamp NOT NULL DEFAULT now()
);
CREATE TABLE store_migrations (
    old_identifier text PRIMARY KEY,
    new_identifier text NOT NULL
);
