-- mesh's schema, version 1. Applied once, in one transaction, by the first
-- node that starts (see migrate() in postgres.rs); never edited after it
-- ships: later changes are new files.
--
-- No foreign keys: the store's contract (shared with the memory and sled
-- stores) cascades room deletion itself, in one transaction.
-- Timestamps are Unix milliseconds (mesh's Timestamp), ids are UUIDs.

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    username      text NOT NULL UNIQUE,
    display_name  text NOT NULL,
    created_at_ms bigint NOT NULL,
    -- A PHC string (argon2id); empty for users of an external auth.
    password_hash text NOT NULL
);

CREATE TABLE devices (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL,
    name          text NOT NULL,
    created_at_ms bigint NOT NULL,
    revoked       boolean NOT NULL
);
CREATE INDEX devices_by_user ON devices (user_id, created_at_ms, id);

CREATE TABLE rooms (
    id            uuid PRIMARY KEY,
    name          text NOT NULL,
    topic         text,
    visibility    text NOT NULL CHECK (visibility IN ('public', 'private')),
    created_by    uuid NOT NULL,
    created_at_ms bigint NOT NULL
);
CREATE INDEX public_rooms ON rooms (created_at_ms, id) WHERE visibility = 'public';

CREATE TABLE members (
    room_id      uuid NOT NULL,
    user_id      uuid NOT NULL,
    role         text NOT NULL CHECK (role IN ('member', 'admin', 'owner')),
    joined_at_ms bigint NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX members_by_user ON members (user_id);

-- Each room's last seq. An append takes this row's lock for the length of
-- its statement: writers to one room (on any node) queue here, which is
-- what keeps seq free of gaps and duplicates.
CREATE TABLE room_seqs (
    room_id  uuid PRIMARY KEY,
    last_seq bigint NOT NULL
);

CREATE TABLE messages (
    room_id              uuid NOT NULL,
    seq                  bigint NOT NULL,
    id                   uuid NOT NULL,
    -- The sender as they were when the message was sent.
    sender_id            uuid NOT NULL,
    sender_username      text NOT NULL,
    sender_display_name  text NOT NULL,
    sender_created_at_ms bigint NOT NULL,
    -- Content is kept exactly as sent, NUL characters included, which
    -- PostgreSQL's text cannot hold: UTF-8 bytes.
    content              bytea NOT NULL,
    created_at_ms        bigint NOT NULL,
    client_id            text,
    PRIMARY KEY (room_id, seq)
);
-- Idempotency: one message per (sender, room, client_id).
CREATE UNIQUE INDEX messages_client_id ON messages (sender_id, room_id, client_id)
    WHERE client_id IS NOT NULL;

CREATE TABLE p2p_sessions (
    id                uuid PRIMARY KEY,
    room_id           uuid NOT NULL,
    kind              text NOT NULL CHECK (kind IN ('file', 'folder', 'terminal')),
    initiator_peer_id uuid NOT NULL,
    target_peer_id    uuid NOT NULL,
    initiator_user_id uuid NOT NULL,
    target_user_id    uuid NOT NULL,
    state             text NOT NULL CHECK (state IN ('pending', 'closed')),
    created_at_ms     bigint NOT NULL,
    expires_at_ms     bigint NOT NULL
);
CREATE INDEX p2p_sessions_by_room ON p2p_sessions (room_id);
CREATE INDEX p2p_sessions_by_initiator ON p2p_sessions (initiator_user_id);
CREATE INDEX p2p_sessions_by_target ON p2p_sessions (target_user_id);
