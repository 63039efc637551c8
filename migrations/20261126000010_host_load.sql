-- Placement needs, for every live host, how many demos that should run are placed there.
-- Counting them in `demos` at every placement read the whole table (4 ms with 5,000
-- demos). Instead, a trigger notes each change of a host's number as a row of
-- `host_load_changes`; the fleet tick folds those into `host_load`, and placement sums
-- both: the same number, as of its statement, from a few hundred rows. Noting a change
-- only inserts, so no transaction waits on another for it.
create table host_load (
    host_id text primary key,
    demos   bigint not null
);

create table host_load_changes (
    id      bigserial primary key,
    host_id text not null,
    delta   integer not null
);

-- A demo counts on its host while it should run and has a host.
create function note_host_load() returns trigger language plpgsql as $$
begin
    if tg_op in ('UPDATE', 'DELETE') and old.desired = 'running' and old.host_id is not null then
        insert into host_load_changes (host_id, delta) values (old.host_id, -1);
    end if;
    if tg_op in ('INSERT', 'UPDATE') and new.desired = 'running' and new.host_id is not null then
        insert into host_load_changes (host_id, delta) values (new.host_id, 1);
    end if;
    return null;
end $$;

create trigger demos_host_load after insert or delete on demos
    for each row execute function note_host_load();
create trigger demos_host_load_update after update of host_id, desired on demos
    for each row when (old.host_id is distinct from new.host_id or old.desired is distinct from new.desired)
    execute function note_host_load();

-- After the triggers: they hold writers to `demos` off until this commits, so no change
-- falls between the count and them.
insert into host_load (host_id, demos)
select host_id, count(*) from demos where desired = 'running' and host_id is not null group by host_id;
