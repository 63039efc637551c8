-- Kept logs of stopped demos outlive nothing: the retention (controller/src/retention.rs)
-- removes the lines of demos stopped for longer than DEMOFLEET_RETENTION, finding them by
-- this index instead of reading every demo.
create index demos_stopped on demos (updated_at) where state = 'stopped';
