-- Duro's PostgreSQL schema, one schema per task hub (the connection's search_path names it).
-- It mirrors the SQLite schema (times are bigint milliseconds since the Unix epoch, protobuf
-- payloads are bytea) and adds what several sidecars sharing one hub need: a lease (owner,
-- expiry, fencing epoch) on every instance and activity, and the sidecars table.

-- The database's clock in milliseconds: lease expiry is decided by one clock for all sidecars.
CREATE FUNCTION duro_now_ms() RETURNS bigint LANGUAGE sql VOLATILE
    AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

-- Instance ids compare byte-wise (COLLATE "C"), as in SQLite: the APIs page and filter by
-- id order and id prefix, which must not depend on the database's locale.
-- One row per orchestration instance: its current execution, status and lease.
CREATE TABLE instances (
    instance_id        text COLLATE "C" PRIMARY KEY,
    execution_id       text NOT NULL,
    name               text NOT NULL,
    version            text,
    status             integer NOT NULL,      -- OrchestrationStatus enum value
    created_at         bigint NOT NULL,
    updated_at         bigint NOT NULL,
    completed_at       bigint,
    scheduled_start_at bigint,
    input              text,
    output             text,
    custom_status      text,
    failure_details    bytea,                 -- TaskFailureDetails, protobuf
    parent_instance_id text COLLATE "C",
    parent_info        bytea,                 -- ParentInstanceInfo, protobuf
    tags               text,                  -- JSON object
    trace_context      bytea,                 -- OrchestrationTraceContext, protobuf
    history_len        integer NOT NULL DEFAULT 0,
    delivery_attempts  integer NOT NULL DEFAULT 0,
    -- The sidecar running this instance's turns (NULL: none), until when (duro_now_ms()),
    -- and the fencing epoch: raised by every claim; a turn commits only under its epoch.
    lease_owner        text,
    lease_until        bigint,
    lease_epoch        bigint NOT NULL DEFAULT 0
);
CREATE INDEX instances_status ON instances(status);
CREATE INDEX instances_created ON instances(created_at, instance_id);
CREATE INDEX instances_parent ON instances(parent_instance_id);
CREATE INDEX instances_completed ON instances(completed_at, instance_id);
CREATE INDEX instances_lease_owner ON instances(lease_owner);

-- Committed history of the current execution of each instance.
CREATE TABLE history (
    instance_id text COLLATE "C" NOT NULL,
    seq         integer NOT NULL,
    event       bytea NOT NULL,               -- HistoryEvent, protobuf
    PRIMARY KEY (instance_id, seq)
);

-- Inbound events not yet consumed by a turn; durable timers are rows whose visible_at lies
-- in the future.
CREATE TABLE inbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id  text COLLATE "C" NOT NULL,
    execution_id text,                        -- NULL: any execution; else only that one
    priority     integer NOT NULL,
    visible_at   bigint NOT NULL,
    event        bytea NOT NULL               -- HistoryEvent, protobuf
);
CREATE INDEX inbox_instance ON inbox(instance_id, id);
CREATE INDEX inbox_visible ON inbox(visible_at);

-- Activity work not yet completed, with its lease like instances.
CREATE TABLE activities (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id       text COLLATE "C" NOT NULL,
    execution_id      text NOT NULL,
    task_id           integer NOT NULL,
    name              text NOT NULL,
    version           text,
    request           bytea NOT NULL,         -- ActivityRequest, protobuf
    progress          text,                   -- built-in activity checkpoint
    delivery_attempts integer NOT NULL DEFAULT 0,
    lease_owner       text,
    lease_until       bigint,
    lease_epoch       bigint NOT NULL DEFAULT 0
);
CREATE INDEX activities_instance ON activities(instance_id);
CREATE INDEX activities_claim ON activities(name, lease_until);

-- Durable entities and their queues (as in SQLite). Entity ids compare byte-wise (COLLATE "C"),
-- as in SQLite, so listing order, prefix ranges and paging cursors do not depend on the
-- database's locale.
CREATE TABLE entities (
    entity_id    text COLLATE "C" PRIMARY KEY, -- '@<name lower-case>@<key>'
    state        text,
    lock_owner   text,
    lock_section text,
    modified_at  bigint NOT NULL,
    -- Deliveries of the current batch without a result (poison detection); a committed
    -- step of the entity resets it.
    delivery_attempts integer NOT NULL DEFAULT 0
);
CREATE INDEX entities_modified ON entities(modified_at);

CREATE TABLE entity_messages (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entity_id  text COLLATE "C" NOT NULL,
    visible_at bigint NOT NULL,
    event      bytea NOT NULL
);
CREATE INDEX entity_messages_entity ON entity_messages(entity_id, id);

-- Sidecars serving this hub: heartbeat (duro_now_ms()) and the names their workers serve.
CREATE TABLE sidecars (
    id            text PRIMARY KEY,
    started_at    bigint NOT NULL,
    heartbeat     bigint NOT NULL,
    orchestrations text[],                    -- NULL: every name
    activities     text[]
);

-- Hub-wide singleton leases (the entity dispatcher), fenced like instance leases.
CREATE TABLE hub_leases (
    name        text PRIMARY KEY,
    lease_owner text,
    lease_until bigint,
    lease_epoch bigint NOT NULL DEFAULT 0
);
