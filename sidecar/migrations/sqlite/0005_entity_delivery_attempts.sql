-- Deliveries of an entity's current batch that came back without a result, kept across
-- restarts so poison detection (--max-delivery-attempts) cannot be reset by restarting the
-- sidecar. Every committed step of the entity (a batch result, a lock step) resets it.
ALTER TABLE entities ADD COLUMN delivery_attempts INTEGER NOT NULL DEFAULT 0;
