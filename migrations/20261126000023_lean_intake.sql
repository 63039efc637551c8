-- Fewer writes per intake event. A deploy event cost PostgreSQL about 100 buffer hits and
-- 26 WAL records; three of its writes are made cheaper or left out here.
--
-- 1. A row update can stay on its page without new index entries (a HOT update) only when
--    no indexed column changes, predicates of partial indexes included. `demos_stopped`
--    indexed `updated_at` where `state = 'stopped'`, so every event's update of its demo
--    wrote a new entry into each of the demo table's six indexes. The index now covers
--    `stopped_at`, which changes only when a demo stops or starts again, and the table's
--    pages keep room for new row versions.
alter table demos add column stopped_at timestamptz
    generated always as (case when state = 'stopped' then updated_at end) stored;
drop index demos_stopped;
create index demos_stopped on demos (stopped_at) where stopped_at is not null;
alter table demos set (fillfactor = 80);

-- 2. A chain named its delivery through a foreign key with its own index: each new chain
--    wrote that index and locked its delivery row. The delivery names its chain instead,
--    written with its outcome (below; a teardown's, rare, just after its outcome); retention
--    keeps a delivery while its chain lives by the chain's primary key.
alter table webhook_deliveries add column chain_id uuid;
update webhook_deliveries w set chain_id = c.id from chains c where c.delivery_id = w.delivery_id;
alter table chains drop constraint chains_delivery_id_fkey;
drop index chains_delivery;

-- 3. demofleet_intake as in 20261126000012_approvals.sql, with each delivery written once: with
-- its outcome, its demo and its chain, in the statement that applies its deploy, instead of
-- inserted as `received` and updated. A delivery is new when no recorded one has its id; one
-- recorded by another batch after this statement began fails the batch on the primary key,
-- and the controller then records each event alone, finding that one a redelivery.
create or replace function demofleet_intake(items jsonb) returns jsonb
language plpgsql as $$
declare
    v_fresh   text[];
    v_deploys jsonb;
    v_answers jsonb := '[]';
    v_item    jsonb;
    v_n       bigint;
    v_e       demofleet_event;
    v_answer  jsonb;
begin
    -- Every event, and whether it is new: redeliveries change nothing. Deploys: each demo's
    -- new generation, unless it already applied a newer event (the conflicting row is locked
    -- either way); then a chain for each new generation, the older chains superseded, the
    -- audit events, and every new delivery with its outcome. Stale deploys, teardowns and
    -- drafts are recorded `received` here and given their outcome below.
    with event as materialized (
        select a.n, a.v, x.*,
               x.delivery is null
               or not exists (select 1 from webhook_deliveries w where w.delivery_id = x.delivery) as fresh
        from jsonb_array_elements(items) with ordinality as a (v, n),
             jsonb_populate_record(null::demofleet_event, a.v) x
    ), asked as (
        select * from event where kind = 'deploy' and fresh
    ), upserted as (
        insert into demos as cur (id, owner, repo, pr, name, desired, state, generation, sha, clone_url,
                                  github_user, pushed_by, event_at, deployed_at)
        select gen_random_uuid(), owner, repo, pr, name, 'running', 'pending', 1, sha, clone_url, github_user,
               pushed_by, event_at, now()
        from asked order by n
        on conflict (owner, repo, pr) do update set
            desired = 'running', state = 'pending', generation = cur.generation + 1, sha = excluded.sha,
            deployed_at = now(), clone_url = excluded.clone_url, github_user = excluded.github_user,
            -- Who brought the head commit: kept while the commit stays (a maintainer marking a
            -- stranger's push ready for review vouches for nothing), else the event's sender.
            pushed_by = case when excluded.sha = cur.sha and cur.pushed_by is not null then cur.pushed_by
                             else excluded.pushed_by end,
            event_at = greatest(cur.event_at, excluded.event_at), error = null, updated_at = now()
        where cur.event_at is null or excluded.event_at is null or excluded.event_at >= cur.event_at
        returning cur.id, cur.owner, cur.repo, cur.pr, cur.name, cur.generation, cur.sha
    ), applied as materialized (
        select asked.n, asked.delivery, asked.actor, upserted.*, gen_random_uuid() as chain
        from asked join upserted using (owner, repo, pr)
    ), superseded as (
        update chains set status = 'superseded', finished_at = now()
        where demo_id in (select id from applied) and status in ('waiting', 'running', 'awaiting_approval')
    ), chained as (
        insert into chains (id, demo_id, generation, kind, status, delivery_id)
        select chain, id, generation, 'deploy', 'waiting', delivery from applied
    ), audited as (
        insert into audit_events (actor, action, demo_id, detail)
        select actor, 'start', id, jsonb_build_object('generation', generation, 'sha', sha, 'delivery', delivery)
        from applied
    ), recorded as (
        insert into webhook_deliveries (delivery_id, event, action, outcome, detail, item, demo_id, chain_id)
        select e.delivery, e.event, e.action,
               case when e.kind = 'record' then e.outcome when a.chain is not null then 'deploy_queued'
                    else 'received' end,
               case when e.kind = 'record' then e.detail end,
               case when e.kind <> 'record' then e.v end,
               a.id, a.chain
        from event e left join applied a on a.n = e.n
        where e.delivery is not null and e.fresh
    )
    select coalesce((select array_agg(delivery) from event where fresh and delivery is not null), '{}'),
           (select jsonb_object_agg(n::text, jsonb_build_object(
                       'outcome', 'deploy_queued', 'chain', chain,
                       'demo', jsonb_build_object('id', id, 'name', name, 'generation', generation)))
            from applied)
    into v_fresh, v_deploys;

    -- The answers in order; teardowns and drafts, rare, one at a time.
    for v_item, v_n in select a.v, a.n from jsonb_array_elements(items) with ordinality as a (v, n) order by a.n loop
        v_e := jsonb_populate_record(null::demofleet_event, v_item);
        if v_e.delivery is not null and not (v_e.delivery = any (v_fresh)) then
            v_answers := v_answers || jsonb_build_array(jsonb_build_object('outcome', 'duplicate'));
        elsif v_e.kind = 'record' then
            v_answers := v_answers || jsonb_build_array(jsonb_build_object('outcome', v_e.outcome, 'detail', v_e.detail));
        elsif v_e.kind = 'deploy' and v_deploys ? v_n::text then
            v_answers := v_answers || jsonb_build_array(v_deploys -> v_n::text);
        elsif v_e.kind = 'deploy' then
            -- Not applied: its demo already applied a newer event. Looked up only now, in a
            -- snapshot that sees a demo another batch created meanwhile.
            v_answers := v_answers || jsonb_build_array(demofleet_intake_stale(v_e));
        elsif v_e.kind in ('teardown', 'draft') then
            v_answer := demofleet_intake_teardown(v_item);
            -- demofleet_intake_teardown (migration 0003) records the outcome; the chain it
            -- made is noted here.
            if v_answer ? 'chain' then
                update webhook_deliveries set chain_id = (v_answer->>'chain')::uuid where delivery_id = v_e.delivery;
            end if;
            v_answers := v_answers || jsonb_build_array(v_answer);
        else
            raise exception 'demofleet_intake: unknown kind %', v_e.kind;
        end if;
    end loop;
    return v_answers;
end
$$;
