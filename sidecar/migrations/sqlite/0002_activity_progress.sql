-- Progress of activities the sidecar runs itself (durable HTTP: which Location to poll
-- next), so a restart resumes instead of repeating the original request.
ALTER TABLE activities ADD COLUMN progress TEXT;
