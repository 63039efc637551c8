-- demofleet_intake as in 20261126000023_lean_intake.sql, with the answers built by the
-- statement that records the events, in one aggregate: a duplicate's, a recorded-only
-- delivery's and an applied deploy's. Until now a loop over the events read each one again
-- and added its answer to a growing `jsonb` array, a copy of the array per event. The loop
-- is left for the events that need a function of their own: stale deploys, teardowns and
-- drafts, in their order.
create or replace function demofleet_intake(items jsonb) returns jsonb
language plpgsql as $$
declare
    v_answers jsonb;
    v_slow    bigint[];
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
    select jsonb_agg(case when e.delivery is not null and not e.fresh then '{"outcome": "duplicate"}'::jsonb
                          when e.kind = 'record' then jsonb_build_object('outcome', e.outcome, 'detail', e.detail)
                          when a.chain is not null then jsonb_build_object(
                              'outcome', 'deploy_queued', 'chain', a.chain,
                              'demo', jsonb_build_object('id', a.id, 'name', a.name, 'generation', a.generation))
                     end order by e.n),
           array_agg(e.n order by e.n) filter (where (e.delivery is null or e.fresh) and e.kind <> 'record'
                                                 and a.chain is null)
    from event e left join applied a on a.n = e.n
    into v_answers, v_slow;

    -- The answers left open: deploys not applied because their demo already applied a
    -- newer event (looked up only now, in a snapshot that sees a demo another batch created
    -- meanwhile), and teardowns and drafts; rare, one at a time.
    foreach v_n in array coalesce(v_slow, '{}') loop
        v_item := items -> (v_n - 1)::int;
        v_e := jsonb_populate_record(null::demofleet_event, v_item);
        if v_e.kind = 'deploy' then
            v_answer := demofleet_intake_stale(v_e);
        elsif v_e.kind in ('teardown', 'draft') then
            v_answer := demofleet_intake_teardown(v_item);
            -- demofleet_intake_teardown (migration 0003) records the outcome; the chain it
            -- made is noted here.
            if v_answer ? 'chain' then
                update webhook_deliveries set chain_id = (v_answer->>'chain')::uuid where delivery_id = v_e.delivery;
            end if;
        else
            raise exception 'demofleet_intake: unknown kind %', v_e.kind;
        end if;
        v_answers := jsonb_set(v_answers, array[(v_n - 1)::text], v_answer);
    end loop;
    return coalesce(v_answers, '[]');
end
$$;
