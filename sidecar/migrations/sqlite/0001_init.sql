-- Duro's SQLite schema. All times are integer milliseconds since the Unix epoch
-- (text timestamps sort wrongly; see cadence-workflow/cadence#8477).

-- One row per orchestration instance: its current execution and status.
CREATE TABLE instances (
    instance_id        TEXT PRIMARY KEY NOT NULL,
    execution_id       TEXT NOT NULL,
    name               TEXT NOT NULL,
    version            TEXT,
    status             INTEGER NOT NULL,      -- OrchestrationStatus enum value
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    completed_at       INTEGER,
    scheduled_start_at INTEGER,
    input              TEXT,
    output             TEXT,
    custom_status      TEXT,
    failure_details    BLOB,                  -- TaskFailureDetails, protobuf
    parent_instance_id TEXT,
    parent_info        BLOB,                  -- ParentInstanceInfo, protobuf
    tags               TEXT,                  -- JSON object
    trace_context      BLOB,                  -- OrchestrationTraceContext, protobuf
    history_len        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX instances_status ON instances(status);
CREATE INDEX instances_created ON instances(created_at);
CREATE INDEX instances_parent ON instances(parent_instance_id);
CREATE INDEX instances_completed ON instances(completed_at, instance_id);

-- Committed history of the current execution of each instance.
CREATE TABLE history (
    instance_id TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    event       BLOB NOT NULL,               -- HistoryEvent, protobuf
    PRIMARY KEY (instance_id, seq)
) WITHOUT ROWID;

-- Inbound events not yet consumed by a turn. Durable timers are rows whose
-- visible_at lies in the future. priority orders a new execution's start and
-- carried-over events before events that arrived earlier.
CREATE TABLE inbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id  TEXT NOT NULL,
    execution_id TEXT,                        -- NULL: any execution; else only that one
    priority     INTEGER NOT NULL,
    visible_at   INTEGER NOT NULL,
    event        BLOB NOT NULL                -- HistoryEvent, protobuf
);
CREATE INDEX inbox_instance ON inbox(instance_id, id);

-- Activity work not yet completed.
CREATE TABLE activities (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id  TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    task_id      INTEGER NOT NULL,
    name         TEXT NOT NULL,
    version      TEXT,
    request      BLOB NOT NULL                -- ActivityRequest, protobuf
);
CREATE INDEX activities_instance ON activities(instance_id);
