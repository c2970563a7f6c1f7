-- Durable timers by due time: start-up reads only the inbox rows due soon, and the engine
-- reads later timers window by window as their time comes near (a million instances waiting
-- on long timers are not held in memory).
CREATE INDEX inbox_visible ON inbox(visible_at);
