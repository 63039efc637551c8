-- Webhook intake in one call: the controller hands PostgreSQL a batch of events and gets
-- back what became of each, so a batch costs one round trip and one commit however many
-- deliveries it holds. Events run in the order given; a batch never holds two events of
-- one pull request or two of one delivery id (the controller cuts batches there).
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

create function demofleet_intake_one(item jsonb) returns jsonb
language plpgsql as $$
declare
    v_kind     text := item->>'kind';
    v_delivery text := item->>'delivery';
    v_event_at timestamptz := (item->>'event_at')::timestamptz;
    d          demos;
    v_chain    uuid;
    v_outcome  text;
    v_detail   text;
begin
    if v_delivery is not null then
        insert into webhook_deliveries (delivery_id, event, action, outcome)
        values (v_delivery, item->>'event', item->>'action', 'received')
        on conflict (delivery_id) do nothing;
        if not found then
            return jsonb_build_object('outcome', 'duplicate');
        end if;
    end if;

    if v_kind = 'record' then
        update webhook_deliveries set outcome = item->>'outcome', detail = item->>'detail'
        where delivery_id = v_delivery;
        return jsonb_build_object('outcome', item->>'outcome', 'detail', item->>'detail');
    end if;

    if v_kind = 'draft' then
        if coalesce((select draft_policy from repo_settings
                     where owner = item->>'owner' and repo = item->>'repo'), 'keep') = 'keep' then
            update webhook_deliveries set outcome = 'ignored', detail = 'draft policy: keep running'
            where delivery_id = v_delivery;
            return jsonb_build_object('outcome', 'ignored', 'detail', 'draft policy: keep running');
        end if;
        v_kind := 'teardown';
    end if;

    if v_kind = 'deploy' then
        -- A new demo, or a new generation of this one unless it already applied a newer
        -- event (the conflicting row is locked either way).
        insert into demos as cur (id, owner, repo, pr, name, desired, state, generation, sha, clone_url,
                                  github_user, event_at, deployed_at)
        values (gen_random_uuid(), item->>'owner', item->>'repo', (item->>'pr')::bigint, item->>'name',
                'running', 'pending', 1, item->>'sha', item->>'clone_url', item->>'github_user', v_event_at, now())
        on conflict (owner, repo, pr) do update set
            desired = 'running', state = 'pending', generation = cur.generation + 1, sha = excluded.sha,
            deployed_at = now(),
            clone_url = excluded.clone_url, github_user = excluded.github_user,
            event_at = greatest(cur.event_at, excluded.event_at), error = null, updated_at = now()
        where cur.event_at is null or excluded.event_at is null or excluded.event_at >= cur.event_at
        returning * into d;
    elsif v_kind = 'teardown' then
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
    else
        raise exception 'demofleet_intake: unknown kind %', v_kind;
    end if;

    if d.id is null then
        select * into d from demos
        where owner = item->>'owner' and repo = item->>'repo' and pr = (item->>'pr')::bigint;
        v_detail := 'a newer event for this pull request was already applied';
        update webhook_deliveries set outcome = 'stale', detail = v_detail, demo_id = d.id
        where delivery_id = v_delivery;
        return jsonb_build_object('outcome', 'stale', 'detail', v_detail,
                                  'demo', jsonb_build_object('id', d.id, 'name', d.name, 'generation', d.generation));
    end if;

    v_outcome := case when v_kind = 'deploy' then 'deploy_queued' else 'teardown_queued' end;
    update chains set status = 'superseded', finished_at = now()
    where demo_id = d.id and status in ('waiting', 'running', 'awaiting_approval');
    v_chain := gen_random_uuid();
    insert into chains (id, demo_id, generation, kind, status, delivery_id)
    values (v_chain, d.id, d.generation, v_kind, 'waiting', v_delivery);
    insert into audit_events (actor, action, demo_id, detail)
    values (item->>'actor', case when v_kind = 'deploy' then 'start' else 'stop' end, d.id,
            jsonb_build_object('generation', d.generation, 'sha', d.sha, 'delivery', v_delivery));
    update webhook_deliveries set outcome = v_outcome, demo_id = d.id where delivery_id = v_delivery;
    return jsonb_build_object('outcome', v_outcome, 'chain', v_chain,
                              'demo', jsonb_build_object('id', d.id, 'name', d.name, 'generation', d.generation));
end
$$;

create function demofleet_intake(items jsonb) returns jsonb
language plpgsql as $$
declare
    item    jsonb;
    answers jsonb := '[]';
begin
    for item in select value from jsonb_array_elements(items) with ordinality order by ordinality loop
        answers := answers || jsonb_build_array(demofleet_intake_one(item));
    end loop;
    return answers;
end
$$;
