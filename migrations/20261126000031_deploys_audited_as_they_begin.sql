-- A deploy is audited when its generation begins, not when its event is recorded.
--
-- The intake's statement wrote an audit row, action `start`, for every deploy event it
-- applied: one insert into `audit_events` and its two indexes, 3 of the 8 WAL records an event
-- wrote. Since migration 0030 a generation a newer event replaced before it began starts
-- nothing, so its row said more than happened. Now the statement notes who asked for the
-- demo's newest generation (`demos.started_by`, the event's actor), and the chain that begins
-- the generation writes the `start` row, with the same detail: the generation, its commit and
-- the delivery that brought it (`chains::begin_generation`). Each delivery's own record stays
-- in `webhook_deliveries`.
alter table demos add column started_by text;

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
    with event as materialized (
        select a.n, a.v, x.*,
               x.delivery is null
               or not exists (select 1 from webhook_deliveries w where w.delivery_id = x.delivery) as fresh
        from jsonb_array_elements(items) with ordinality as a (v, n),
             jsonb_populate_record(null::demofleet_event, a.v) x
    ), locked as materialized (
        -- A demo changed since the statement began is read as it is now (`for update` waits
        -- for its writer and takes its newest version); one created since is not seen, so
        -- its insert below fails on the unique index and the controller records the batch's
        -- events again one by one.
        select d.id, d.owner, d.repo, d.pr, d.name, d.generation, d.sha, d.pushed_by, d.event_at
        from demos d
        where (d.owner, d.repo, d.pr) in (select owner, repo, pr from event where kind = 'deploy' and fresh)
        order by d.owner, d.repo, d.pr
        for update
    ), asked as materialized (
        -- Each new deploy, with its demo as it stands and the newest time among the earlier
        -- events of its pull request in the batch.
        select e.n, e.delivery, e.actor, e.owner, e.repo, e.pr, e.name, e.sha, e.clone_url, e.github_user,
               e.pushed_by, e.event_at,
               d.id as demo, d.name as demo_name, d.generation as demo_generation, d.sha as demo_sha,
               d.pushed_by as demo_pushed_by, d.event_at as demo_event_at,
               max(e.event_at) over (partition by e.owner, e.repo, e.pr order by e.n
                                     rows between unbounded preceding and 1 preceding) as earlier_at
        from event e left join locked d on (d.owner, d.repo, d.pr) = (e.owner, e.repo, e.pr)
        where e.kind = 'deploy' and e.fresh
    ), applied as materialized (
        -- Those applied, each with its generation; `brought`: whether this event's sender
        -- becomes the demo's pusher (its commit differs from the one before it, or no pusher
        -- was known), as the single-event rule `pushed_by` below has it.
        select asked.*,
               coalesce(demo_generation, 0) + row_number() over pr_events as generation,
               n = max(n) over pr_all as newest,
               max(event_at) over pr_all as newest_at,
               sha is distinct from lag(sha, 1, demo_sha) over pr_events
               or (demo_pushed_by is null and row_number() over pr_events = 1) as brought
        from asked
        where (demo_event_at is null or event_at is null or event_at >= demo_event_at)
          and (earlier_at is null or event_at is null or event_at >= earlier_at)
        window pr_events as (partition by owner, repo, pr order by n),
               pr_all as (partition by owner, repo, pr)
    ), demo as materialized (
        -- Each demo as its newest applied event leaves it. Its pusher: the sender of the
        -- newest event that brought its commit; if none did, the one it had.
        select coalesce(a.demo, gen_random_uuid()) as id, a.demo is null as new, a.owner, a.repo, a.pr,
               coalesce(a.demo_name, a.name) as name, a.generation, a.delivery, a.actor, a.sha, a.clone_url,
               a.github_user,
               case when pusher.found then pusher.pushed_by else a.demo_pushed_by end as pushed_by,
               case when a.demo_event_at is null then a.newest_at
                    else greatest(a.demo_event_at, a.newest_at) end as event_at
        from applied a
        left join lateral (select true as found, b.pushed_by from applied b
                           where (b.owner, b.repo, b.pr) = (a.owner, a.repo, a.pr) and b.brought
                           order by b.n desc limit 1) pusher on true
        where a.newest
    ), created as (
        insert into demos (id, owner, repo, pr, name, desired, state, generation, delivery_id, started_by, sha,
                           clone_url, github_user, pushed_by, event_at, deployed_at)
        select id, owner, repo, pr, name, 'running', 'pending', generation, delivery, actor, sha, clone_url,
               github_user, pushed_by, event_at, now()
        from demo where new order by owner, repo, pr
    ), updated as (
        update demos cur set
            desired = 'running', state = 'pending', generation = d.generation, delivery_id = d.delivery,
            started_by = d.actor, sha = d.sha,
            deployed_at = now(),
            clone_url = d.clone_url, github_user = d.github_user, pushed_by = d.pushed_by, event_at = d.event_at,
            error = null, updated_at = now()
        from demo d
        where cur.id = d.id and not d.new
    ), superseded as (
        update chains set status = 'superseded', finished_at = now()
        where demo_id in (select id from demo where not new) and status in ('waiting', 'running', 'awaiting_approval')
    ), placed as materialized (
        -- Each applied event with its demo's id and name.
        select a.n, a.generation, d.id, d.name
        from applied a join demo d on (d.owner, d.repo, d.pr) = (a.owner, a.repo, a.pr)
    ), recorded as (
        insert into webhook_deliveries (delivery_id, event, action, outcome, detail, item, demo_id)
        select e.delivery, e.event, e.action,
               case when e.kind = 'record' then e.outcome when p.n is not null then 'deploy_queued'
                    else 'received' end,
               case when e.kind = 'record' then e.detail end,
               case when e.kind <> 'record' then e.v end,
               p.id
        from event e left join placed p on p.n = e.n
        where e.delivery is not null and e.fresh
    )
    select jsonb_agg(case when e.delivery is not null and not e.fresh then '{"outcome": "duplicate"}'::jsonb
                          when e.kind = 'record' then jsonb_build_object('outcome', e.outcome, 'detail', e.detail)
                          when p.n is not null then jsonb_build_object(
                              'outcome', 'deploy_queued',
                              'demo', jsonb_build_object('id', p.id, 'name', p.name, 'generation', p.generation))
                     end order by e.n),
           array_agg(e.n order by e.n) filter (where (e.delivery is null or e.fresh) and e.kind <> 'record'
                                                 and p.n is null)
    from event e left join placed p on p.n = e.n
    into v_answers, v_slow;

    -- The answers left open: stale deploys (older than what their demo, or the batch before
    -- them, applied), and teardowns and drafts; rare, one at a time.
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
-- As migration 0029 set it for the function this replaces.
alter function demofleet_intake(jsonb) set enable_bitmapscan = off;
