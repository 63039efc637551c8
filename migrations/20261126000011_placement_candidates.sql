-- Placement in one round trip: take the placement lock, then read the live, not draining
-- hosts with their numbers of demos (migration 10). In a function, the read is a new
-- statement and sees every placement that committed before the lock was granted. The
-- key spells "placing".
create function demofleet_placement_candidates(timeout_secs double precision, min_free_disk_bytes bigint)
returns table (id text, capacity integer, low_disk boolean, demos bigint)
language plpgsql as $$
#variable_conflict use_column
begin
    perform pg_advisory_xact_lock(31644362927074919); -- 0x00706c6163696e67: "placing"
    return query
        select h.id, h.capacity, coalesce(h.disk_free_bytes < min_free_disk_bytes, false), coalesce(l.demos, 0)::bigint
        from hosts h
        left join (select c.host_id, sum(c.n) as demos
                   from (select host_id, demos as n from host_load
                         union all select host_id, delta from host_load_changes) c
                   group by c.host_id) l on l.host_id = h.id
        where not h.draining and h.last_seen > now() - make_interval(secs => timeout_secs)
        order by h.id;
end $$;
