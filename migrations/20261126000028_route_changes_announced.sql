-- Route changes announced (NOTIFY demofleet_routes), so each controller's route table follows
-- them (controller/src/edge/follow.rs) instead of reading every routed or sleeping demo each
-- tick. What a route is made of (db::demos::routes): the demo's `routed`, `host_port`,
-- `host_id`, `serving_host`, whether it is running and asleep, and its name; its host's
-- address; its repository's settings (idle time, gate). A notification goes out when its
-- transaction commits, in commit order, and one transaction announces a payload once.

-- One demo's route: the payload is its id.
create function demofleet_announce_route() returns trigger
language plpgsql as $$
begin
    perform pg_notify('demofleet_routes', new.id::text);
    return null;
end
$$;
create trigger demos_route_changed after update on demos
    for each row
    when (old.routed is distinct from new.routed or old.host_port is distinct from new.host_port
          or old.host_id is distinct from new.host_id or old.serving_host is distinct from new.serving_host
          or old.name is distinct from new.name
          or (old.desired = 'running' and old.state = 'sleeping') is distinct from
             (new.desired = 'running' and new.state = 'sleeping'))
    execute function demofleet_announce_route();
-- A demo written routed or asleep from the start (a restored or imported record).
create trigger demos_route_added after insert on demos
    for each row
    when (new.routed or (new.desired = 'running' and new.state = 'sleeping'))
    execute function demofleet_announce_route();

-- Many routes at once: the payload `*` asks for the whole table.
create function demofleet_announce_routes() returns trigger
language plpgsql as $$
begin
    perform pg_notify('demofleet_routes', '*');
    return null;
end
$$;
create trigger hosts_address_changed after update of address on hosts
    for each row when (old.address is distinct from new.address)
    execute function demofleet_announce_routes();
create trigger repo_settings_changed after insert or update or delete on repo_settings
    for each statement execute function demofleet_announce_routes();
