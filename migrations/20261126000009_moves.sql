-- Moving a demo to another host (its host drains or stops answering): `host_id` is where
-- its newest generation is placed, `serving_host` the host of the container that answers
-- now, on `host_port`. The two differ while a demo moves; the route and the old container
-- stay until the new one passes its health check.
alter table demos add column serving_host text references hosts (id);
update demos set serving_host = host_id where host_port is not null;
