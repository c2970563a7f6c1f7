-- Failed deliveries of an instance's turn and of an activity, kept across restarts so
-- poison detection (--max-delivery-attempts) cannot be reset by restarting the sidecar.
-- A committed turn resets the instance's count; a completed activity's row is deleted.
ALTER TABLE instances ADD COLUMN delivery_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE activities ADD COLUMN delivery_attempts INTEGER NOT NULL DEFAULT 0;
