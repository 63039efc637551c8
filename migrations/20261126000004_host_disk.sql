-- Each host's demo file system, from its heartbeats: hosts short of space get no new demos.
alter table hosts add column disk_total_bytes bigint;
alter table hosts add column disk_free_bytes bigint;
