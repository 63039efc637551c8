-- Webhook intake in one call: the controller hands PostgreSQL a batch of events and gets
-- back what became of each, so a batch costs one round trip and one commit however many
-- deliveries it holds. A batch never holds two events of one pull request or two of one
-- delivery id (the controller cuts batches there), so its deliveries and its deploys -
-- nearly all events - are recorded set-based, a few statements for the whole batch.
--
-- An item (jsonb) has:
--   kind       'deploy' | 'teardown' | 'draft' (teardown if the repository's draft policy
--              says stop) | 'record' (only record the delivery, with `outcome` and `detail`)
--   delivery   X-GitHub-Delivery, or null for events that do not come from a webhook
--   event, action, outcome, detail
--   owner, repo, pr, name, sha, clone_url, github_user: the pull request
--   event_at   the event's own time (pull_request.updated_at), or null
--   actor      who asked, for the audit trail
-- The answer for each item: {outcome, detail, demo: {id, name, generation}, chain}.
-- A new chain is created `waiting`, its demo `pending` (deploy) or `stopping` (teardown):
-- the controller starts the chain after commit, and its periodic tick starts any that a
-- crash left waiting.

-- One event as a row.
create type demofleet_event as (
    kind text, delivery text, event text, action text, outcome text, detail text,
    owner text, repo text, pr bigint, name text, sha text, clone_url text, github_user text,
    event_at timestamptz, actor text
);

-- Record a pull request event as stale: its demo already applied a newer event.
create function demofleet_intake_stale(e demofleet_event) returns jsonb
language plpgsql as $$
declare
    d demos;
begin
    select * into d from demos where owner = e.owner and repo = e.repo and pr = e.pr;
    update webhook_deliveries
    set outcome = 'stale', detail = 'a newer event for this pull request was already applied', demo_id = d.id
    where delivery_id = e.delivery;
    return jsonb_build_object('outcome', 'stale', 'detail', 'a newer event for this pull request was already applied',
                              'demo', jsonb_build_object('id', d.id, 'name', d.name, 'generation', d.generation));
end
$$;

-- A teardown or draft event whose delivery is recorded already (as `received`).
create function demofleet_intake_teardown(item jsonb) returns jsonb
language plpgsql as $$
declare
    v_delivery text := item->>'delivery';
    v_event_at timestamptz := (item->>'event_at')::timestamptz;
    d          demos;
    v_chain    uuid;
begin
    if item->>'kind' = 'draft' then
        if coalesce((select draft_policy from repo_settings
                     where owner = item->>'owner' and repo = item->>'repo'), 'keep') = 'keep' then
            update webhook_deliveries set outcome = 'ignored', detail = 'draft policy: keep running'
            where delivery_id = v_delivery;
            return jsonb_build_object('outcome', 'ignored', 'detail', 'draft policy: keep running');
        end if;
    end if;

    select * into d from demos
    where owner = item->>'owner' and repo = item->>'repo' and pr = (item->>'pr')::bigint for update;
    if not found then
        -- Closed before any other event arrived: remember it stopped, so those events,
        -- being older, change nothing when they come.
        insert into demos (id, owner, repo, pr, name, desired, state, generation, sha, clone_url,
                           github_user, event_at)
        values (gen_random_uuid(), item->>'owner', item->>'repo', (item->>'pr')::bigint, item->>'name',
                'stopped', 'stopped', 1, item->>'sha', item->>'clone_url', item->>'github_user', v_event_at)
        on conflict (owner, repo, pr) do nothing;
        if found then
            update webhook_deliveries set outcome = 'ignored', detail = 'no demo for this pull request'
            where delivery_id = v_delivery;
            return jsonb_build_object('outcome', 'ignored', 'detail', 'no demo for this pull request');
        end if;
        -- Another event created the demo meanwhile: tear that down (or find this one stale).
        select * into d from demos
        where owner = item->>'owner' and repo = item->>'repo' and pr = (item->>'pr')::bigint for update;
    end if;
    if d.event_at is not null and v_event_at is not null and v_event_at < d.event_at then
        d := null;
    else
        update demos set desired = 'stopped', state = 'stopping', generation = generation + 1, error = null,
                         event_at = greatest(demos.event_at, v_event_at), updated_at = now()
        where id = d.id
        returning * into d;
    end if;

    if d.id is null then
        return demofleet_intake_stale(jsonb_populate_record(null::demofleet_event, item));
    end if;

    update chains set status = 'superseded', finished_at = now()
    where demo_id = d.id and status in ('waiting', 'running', 'awaiting_approval');
    v_chain := gen_random_uuid();
    insert into chains (id, demo_id, generation, kind, status, delivery_id)
    values (v_chain, d.id, d.generation, 'teardown', 'waiting', v_delivery);
    insert into audit_events (actor, action, demo_id, detail)
    values (item->>'actor', 'stop', d.id,
            jsonb_build_object('generation', d.generation, 'sha', d.sha, 'delivery', v_delivery));
    update webhook_deliveries set outcome = 'teardown_queued', demo_id = d.id where delivery_id = v_delivery;
    return jsonb_build_object('outcome', 'teardown_queued', 'chain', v_chain,
                              'demo', jsonb_build_object('id', d.id, 'name', d.name, 'generation', d.generation));
end
$$;

create function demofleet_intake(items jsonb) returns jsonb
language plpgsql as $$
declare
    v_fresh   text[];
    v_deploys jsonb;
    v_answers jsonb := '[]';
    v_item    jsonb;
    v_n       bigint;
    v_e       demofleet_event;
begin
    -- Every delivery: new ones are recorded, redeliveries change nothing.
    with recorded as (
        insert into webhook_deliveries (delivery_id, event, action, outcome, detail)
        select x.delivery, x.event, x.action,
               case when x.kind = 'record' then x.outcome else 'received' end,
               case when x.kind = 'record' then x.detail end
        from jsonb_populate_recordset(null::demofleet_event, items) x
        where x.delivery is not null
        on conflict (delivery_id) do nothing
        returning delivery_id
    )
    select coalesce(array_agg(delivery_id), '{}') into v_fresh from recorded;

    -- Deploys: each demo's new generation, unless it already applied a newer event (the
    -- conflicting row is locked either way); then a chain for each new generation, the
    -- older chains superseded, the audit events and the deliveries' outcomes.
    with asked as (
        select a.n, x.*
        from jsonb_array_elements(items) with ordinality as a (v, n),
             jsonb_populate_record(null::demofleet_event, a.v) x
        where x.kind = 'deploy' and (x.delivery is null or x.delivery = any (v_fresh))
    ), upserted as (
        insert into demos as cur (id, owner, repo, pr, name, desired, state, generation, sha, clone_url,
                                  github_user, event_at, deployed_at)
        select gen_random_uuid(), owner, repo, pr, name, 'running', 'pending', 1, sha, clone_url, github_user,
               event_at, now()
        from asked order by n
        on conflict (owner, repo, pr) do update set
            desired = 'running', state = 'pending', generation = cur.generation + 1, sha = excluded.sha,
            deployed_at = now(), clone_url = excluded.clone_url, github_user = excluded.github_user,
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
    ), noted as (
        update webhook_deliveries w set outcome = 'deploy_queued', demo_id = applied.id
        from applied where w.delivery_id = applied.delivery
    )
    select jsonb_object_agg(n::text, jsonb_build_object(
               'outcome', 'deploy_queued', 'chain', chain,
               'demo', jsonb_build_object('id', id, 'name', name, 'generation', generation)))
    into v_deploys from applied;

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
            v_answers := v_answers || jsonb_build_array(demofleet_intake_teardown(v_item));
        else
            raise exception 'demofleet_intake: unknown kind %', v_e.kind;
        end if;
    end loop;
    return v_answers;
end
$$;
