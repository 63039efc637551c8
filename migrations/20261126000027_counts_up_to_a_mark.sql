-- `/metrics` without reading the whole history. Its counters of webhook deliveries and of
-- step attempts counted every kept row at each scrape (seconds of PostgreSQL per scrape on a
-- few million rows) plus what retention had removed. Now a tally holds the count of every
-- row stamped before a mark (received_at for deliveries, finished_at for attempts), and a
-- scrape adds the rows at or after the mark only, read through an index. The replica holding
-- the fleet lease moves each mark forward at every tick (demofleet_count_up), counting the
-- rows it passes into the tally in the same transaction.
--
-- What keeps the tally exact:
-- - A mark never passes a transaction still running: it stays at or before the start of the
--   oldest client transaction of the database (of those pg_stat_activity shows the
--   controller's role: its own), and the intake stamps a delivery with its transaction's
--   start (`now()`), so no delivery can appear below the mark after it moved.
-- - A row stamped before its own transaction began (written with an explicit time) is counted
--   into the tally by the insert trigger if it lands below the mark.
-- - A counted delivery whose event, outcome or time changes moves between the tally's rows
--   (update trigger); attempts are never updated.
-- - Retention adds the rows it removes at or after the mark (below it they are counted).
-- Each of those and demofleet_count_up take the mark's row (`for share` against `for update`)
-- before reading, so a mark that moves meanwhile is seen by one side, never by neither or both.
alter table webhook_delivery_counts rename column pruned to counted;
alter table step_attempt_counts rename column pruned to counted;

create table count_marks (
    counted text primary key check (counted in ('webhook_deliveries', 'step_attempts')),
    until   timestamptz not null
);
-- From the start: the tallies hold what retention removed, every kept row is above the marks.
insert into count_marks (counted, until) values ('webhook_deliveries', '-infinity'), ('step_attempts', '-infinity');

-- A scrape and a mark's move read the attempts after a time.
create index step_attempts_finished on step_attempts (finished_at);

-- Move the mark of table `mark` forward to `lag` before now (or the start of the oldest running
-- transaction, if earlier), by at most `most` rows, counting the rows passed. One mark a call,
-- each in a transaction of its own: no transaction holds both marks.
create function demofleet_count_up(mark text, lag interval, most integer) returns void
language plpgsql as $$
declare
    v_from   timestamptz;
    v_to     timestamptz;
    v_oldest timestamptz;
begin
    select m.until into strict v_from from count_marks m where m.counted = mark for update;
    -- Read once the mark is held: a transaction not seen here began after this point.
    v_oldest := (select min(xact_start) from pg_stat_activity
                 where datname = current_database() and backend_type = 'client backend'
                   and pid <> pg_backend_pid());
    if mark = 'webhook_deliveries' then
        v_to := least(now() - lag, v_oldest,
                      (select received_at from webhook_deliveries where received_at >= v_from
                       order by received_at offset most limit 1));
        if v_to > v_from then
            insert into webhook_delivery_counts (event, outcome, counted)
            select event, outcome, count(*) from webhook_deliveries
            where received_at >= v_from and received_at < v_to group by 1, 2
            on conflict (event, outcome) do update set counted = webhook_delivery_counts.counted + excluded.counted;
        end if;
    else
        v_to := least(now() - lag, v_oldest,
                      (select finished_at from step_attempts where finished_at >= v_from
                       order by finished_at offset most limit 1));
        if v_to > v_from then
            insert into step_attempt_counts (step, outcome, counted, seconds)
            select s.name, a.outcome, count(*), coalesce(sum(a.duration_ms), 0)::float8 / 1000
            from step_attempts a join chain_steps s on s.chain_id = a.chain_id and s.position = a.position
            where a.finished_at >= v_from and a.finished_at < v_to group by 1, 2
            on conflict (step, outcome) do update
                set counted = step_attempt_counts.counted + excluded.counted,
                    seconds = step_attempt_counts.seconds + excluded.seconds;
        end if;
    end if;
    if v_to > v_from then
        update count_marks m set until = v_to where m.counted = mark;
    end if;
end
$$;

-- A delivery counted anew: one written with a time before its transaction began (a row the
-- mark may have passed), or a counted one whose event, outcome or time changed. Row triggers
-- whose conditions the intake's rows (stamped with `now()`, never updated) do not meet, so
-- the intake pays nothing more than the condition.
create function demofleet_recount_delivery() returns trigger
language plpgsql as $$
declare
    v_mark timestamptz;
begin
    select until into v_mark from count_marks where counted = 'webhook_deliveries' for share;
    if tg_op = 'UPDATE' and old.received_at < v_mark then
        update webhook_delivery_counts set counted = counted - 1 where event = old.event and outcome = old.outcome;
    end if;
    if new.received_at < v_mark then
        insert into webhook_delivery_counts (event, outcome, counted) values (new.event, new.outcome, 1)
        on conflict (event, outcome) do update set counted = webhook_delivery_counts.counted + 1;
    end if;
    return null;
end
$$;
create trigger webhook_deliveries_late after insert on webhook_deliveries
    for each row when (new.received_at < now())
    execute function demofleet_recount_delivery();
create trigger webhook_deliveries_recount after update of event, outcome, received_at on webhook_deliveries
    for each row
    when (old.event is distinct from new.event or old.outcome is distinct from new.outcome
          or old.received_at is distinct from new.received_at)
    execute function demofleet_recount_delivery();

-- The same for an attempt written with a time before its transaction began (attempts are
-- never updated).
create function demofleet_count_late_attempt() returns trigger
language plpgsql as $$
declare
    v_mark timestamptz;
begin
    select until into v_mark from count_marks where counted = 'step_attempts' for share;
    if new.finished_at < v_mark then
        insert into step_attempt_counts (step, outcome, counted, seconds)
        select s.name, new.outcome, 1, coalesce(new.duration_ms, 0)::float8 / 1000
        from chain_steps s where s.chain_id = new.chain_id and s.position = new.position
        on conflict (step, outcome) do update
            set counted = step_attempt_counts.counted + 1,
                seconds = step_attempt_counts.seconds + excluded.seconds;
    end if;
    return null;
end
$$;
create trigger step_attempts_late after insert on step_attempts
    for each row when (new.finished_at < now())
    execute function demofleet_count_late_attempt();
