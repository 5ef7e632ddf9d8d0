-- Lemmy 1.0 shaped schema: only the tables/columns fsq reads, written from the documented
-- names (docs: pictrs-lemmy reference, "Lemmy database"). Not Lemmy's own migrations.
-- Differences from 0.19: published -> published_at, actor_id -> ap_id, community description ->
-- sidebar + summary, local_image keyed to person_id with thumbnail_for_post_id, no delete token.
CREATE TABLE instance (
    id     serial PRIMARY KEY,
    domain varchar(255) NOT NULL UNIQUE
);
CREATE TABLE person (
    id           serial PRIMARY KEY,
    name         varchar(255) NOT NULL,
    display_name varchar(255),
    avatar       text,
    banner       text,
    bio          text,
    ap_id        varchar(255) NOT NULL UNIQUE,
    local        boolean NOT NULL DEFAULT true,
    instance_id  integer NOT NULL REFERENCES instance(id),
    deleted      boolean NOT NULL DEFAULT false,
    published_at timestamptz NOT NULL DEFAULT now()
);
-- 1.0 has no person.banned: a ban is a row here (received_ban_at, optional expiry).
CREATE TABLE instance_actions (
    person_id       integer NOT NULL REFERENCES person(id),
    instance_id     integer NOT NULL REFERENCES instance(id),
    blocked_at      timestamptz,
    received_ban_at timestamptz,
    ban_expires_at  timestamptz,
    PRIMARY KEY (person_id, instance_id)
);
CREATE TABLE local_user (
    id        serial PRIMARY KEY,
    person_id integer NOT NULL UNIQUE REFERENCES person(id),
    email     text UNIQUE,
    admin     boolean NOT NULL DEFAULT false
);
CREATE TABLE community (
    id          serial PRIMARY KEY,
    name        varchar(255) NOT NULL,
    title       varchar(255) NOT NULL,
    sidebar     text,
    summary     text,
    icon        text,
    banner      text,
    ap_id       varchar(255) NOT NULL UNIQUE,
    instance_id integer NOT NULL REFERENCES instance(id),
    local       boolean NOT NULL DEFAULT true,
    removed     boolean NOT NULL DEFAULT false,
    deleted     boolean NOT NULL DEFAULT false,
    published_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE post (
    id               serial PRIMARY KEY,
    name             varchar(200) NOT NULL,
    url              varchar(512),
    body             text,
    creator_id       integer NOT NULL REFERENCES person(id),
    community_id     integer NOT NULL REFERENCES community(id),
    removed          boolean NOT NULL DEFAULT false,
    deleted          boolean NOT NULL DEFAULT false,
    published_at     timestamptz NOT NULL DEFAULT now(),
    thumbnail_url    text,
    embed_video_url  text,
    ap_id            varchar(255) NOT NULL UNIQUE,
    local            boolean NOT NULL DEFAULT true,
    url_content_type text,
    alt_text         text
);
CREATE TABLE comment (
    id         serial PRIMARY KEY,
    creator_id integer NOT NULL REFERENCES person(id),
    post_id    integer NOT NULL REFERENCES post(id),
    content    text NOT NULL,
    removed    boolean NOT NULL DEFAULT false,
    deleted    boolean NOT NULL DEFAULT false,
    published_at timestamptz NOT NULL DEFAULT now(),
    ap_id      varchar(255) NOT NULL UNIQUE,
    local      boolean NOT NULL DEFAULT true,
    path       text NOT NULL DEFAULT '0'      -- ltree in Lemmy; fsq never reads it
);
CREATE TABLE private_message (
    id           serial PRIMARY KEY,
    creator_id   integer NOT NULL REFERENCES person(id),
    recipient_id integer NOT NULL REFERENCES person(id),
    content      text NOT NULL,
    ap_id        varchar(255) NOT NULL UNIQUE,
    local        boolean NOT NULL DEFAULT true,
    deleted      boolean NOT NULL DEFAULT false,
    removed      boolean NOT NULL DEFAULT false,
    published_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE site (
    id          serial PRIMARY KEY,
    name        varchar(20) NOT NULL,
    icon        text,
    banner      text,
    ap_id       varchar(255) NOT NULL UNIQUE,
    instance_id integer NOT NULL REFERENCES instance(id)
);
CREATE TABLE login_token (
    token      text PRIMARY KEY,
    user_id    integer NOT NULL REFERENCES local_user(id),
    published_at timestamptz NOT NULL DEFAULT now(),
    ip         text,
    user_agent text
);
CREATE TABLE custom_emoji (
    id            serial PRIMARY KEY,
    local_site_id integer NOT NULL DEFAULT 1,
    shortcode     varchar(128) NOT NULL UNIQUE,
    image_url     text NOT NULL,
    alt_text      text NOT NULL DEFAULT '',
    category      text NOT NULL DEFAULT '',
    published_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE post_report (
    id                 serial PRIMARY KEY,
    creator_id         integer NOT NULL REFERENCES person(id),
    post_id            integer NOT NULL REFERENCES post(id),
    original_post_name varchar(200) NOT NULL,
    original_post_url  text,
    original_post_body text,
    reason             text NOT NULL,
    resolved           boolean NOT NULL DEFAULT false,
    published_at       timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE comment_report (
    id                    serial PRIMARY KEY,
    creator_id            integer NOT NULL REFERENCES person(id),
    comment_id            integer NOT NULL REFERENCES comment(id),
    original_comment_text text NOT NULL,
    reason                text NOT NULL,
    resolved              boolean NOT NULL DEFAULT false,
    published_at          timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE local_image (
    pictrs_alias          text PRIMARY KEY,
    published_at          timestamptz NOT NULL DEFAULT now(),
    -- A server-made thumbnail has thumbnail_for_post_id set and person_id = the post's creator
    -- (who posted the link, not the file); NULL person_id only for rows with no known person.
    person_id             integer REFERENCES person(id),
    thumbnail_for_post_id integer REFERENCES post(id)
);
CREATE TABLE remote_image (
    link      text PRIMARY KEY,
    published_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE image_details (
    link         text PRIMARY KEY,
    width        integer NOT NULL,
    height       integer NOT NULL,
    content_type text NOT NULL
);
