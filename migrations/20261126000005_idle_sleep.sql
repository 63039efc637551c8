-- Idle sleep: a demo nobody visited for a while is stopped (state `sleeping`, container,
-- image and clone kept) by a `sleep` chain, and started again by a `wake` chain when the
-- edge proxy receives a request for it.
alter table chains drop constraint chains_kind_check;
alter table chains add constraint chains_kind_check check (kind in ('deploy', 'teardown', 'sleep', 'wake'));

-- The last request the edge proxy passed to the demo (written in batches, every tick).
alter table demos add column last_request_at timestamptz;

-- Put the repository's demos to sleep after this many seconds without a request; 0: never;
-- none: the controller's default (DEMOFLEET_IDLE_SLEEP).
alter table repo_settings add column idle_sleep_seconds integer check (idle_sleep_seconds >= 0);
