-- Approvals name who brought a demo's head commit, and what they approve.
--
-- demos.pushed_by: the GitHub login whose event brought the current head commit (the sender
-- of `synchronize` for a push, of `opened` for the first); it, not the pull request's
-- author, must be trusted (or someone must approve the commit), so a maintainer's pull
-- request from a stranger's fork does not run the stranger's later pushes unapproved.
-- Null for demos recorded before this migration and those started by hand: the author then.
alter table demos add column pushed_by text;
alter type demofleet_event add attribute pushed_by text;

-- Each `/demo approve` comment approves once: the same signed comment delivered again under
-- a new delivery id does nothing.
create table approval_comments (
    comment_id bigint primary key,
    delivery_id text not null,
    created_at timestamptz not null default now()
);

-- demofleet_intake as in 20261126000008_redeliver.sql, also recording pushed_by.
create or replace function demofleet_intake(items jsonb) returns jsonb
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
        insert into webhook_deliveries (delivery_id, event, action, outcome, detail, item)
        select x.delivery, x.event, x.action,
               case when x.kind = 'record' then x.outcome else 'received' end,
               case when x.kind = 'record' then x.detail end,
               case when x.kind <> 'record' then a.v end
        from jsonb_array_elements(items) as a (v), jsonb_populate_record(null::demofleet_event, a.v) x
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
