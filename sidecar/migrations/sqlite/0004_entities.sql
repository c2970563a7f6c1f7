-- Durable entities. One row per entity that has (or had) state, a lock or queued
-- requests; its queue is the entity_messages rows addressed to it, in id order.
CREATE TABLE entities (
    entity_id    TEXT PRIMARY KEY NOT NULL,   -- '@<name lower-case>@<key>'
    state        TEXT,                        -- serialized state; NULL: none
    lock_owner   TEXT,                        -- orchestration holding the lock; NULL: free
    lock_section TEXT,                        -- its critical section id
    modified_at  INTEGER NOT NULL             -- last state change (ms)
);
CREATE INDEX entities_modified ON entities(modified_at);

-- Requests waiting in entities' queues (signals, calls, lock requests, unlocks).
-- A signal scheduled for later is a row whose visible_at lies in the future.
CREATE TABLE entity_messages (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    entity_id  TEXT NOT NULL,
    visible_at INTEGER NOT NULL,
    event      BLOB NOT NULL                  -- HistoryEvent, protobuf
);
CREATE INDEX entity_messages_entity ON entity_messages(entity_id, id);
