//! Leases in the store: claiming, renewing, releasing and fencing instances and activities.
