-- Retries through TTL queues, the dead-letter queue, attempt history, event ordering,
-- audit events, GitHub feedback state and per-repository settings.

-- Which exchange an outbox message goes to, and its AMQP type ('step', 'result', 'notify', 'dead').
alter table outbox add column exchange text not null default 'demofleet.tasks';
alter table outbox add column kind text not null default 'step';

-- Attempts before this number do not count against the retry budget (a manual retry
-- gives the step a fresh budget).
alter table chain_steps add column budget_from integer not null default 0;

-- One row per attempt of a step, with its outcome and how long it took.
create table step_attempts (
    chain_id    uuid not null,
    position    integer not null,
    attempt     integer not null,
    host_id     text,
    outcome     text not null check (outcome in ('succeeded', 'failed')),
    error       text,
    duration_ms bigint,
    finished_at timestamptz not null default now(),
    primary key (chain_id, position, attempt),
    foreign key (chain_id, position) references chain_steps (chain_id, position) on delete cascade
);

-- The event time (pull_request.updated_at) of the newest event applied to a demo: an
-- event older than this arrived late and changes nothing.
alter table demos add column event_at timestamptz;
-- When the demo was last asked to run a new head (or to run at all).
alter table demos add column deployed_at timestamptz;

-- Every start, stop and approval, naming who.
create table audit_events (
    id      bigserial primary key,
    at      timestamptz not null default now(),
    actor   text not null,
    action  text not null,
    demo_id uuid references demos (id),
    detail  jsonb not null default '{}'
);
create index audit_events_demo on audit_events (demo_id, at);

-- Settings per repository; a missing row means the defaults.
create table repo_settings (
    owner        text not null,
    repo         text not null,
    -- What converted_to_draft does: keep the demo running, or stop it.
    draft_policy text not null default 'keep' check (draft_policy in ('keep', 'stop')),
    -- Stop a demo this many seconds after its last push.
    ttl_seconds  integer check (ttl_seconds > 0),
    -- At most this many demos of the repository run at once; more wait as pending.
    max_demos    integer check (max_demos >= 0),
    primary key (owner, repo)
);

-- Approvals: an author without write access waits until someone approves the head commit.
alter table chains drop constraint chains_status_check;
alter table chains add constraint chains_status_check
    check (status in ('waiting', 'running', 'awaiting_approval', 'succeeded', 'failed', 'superseded'));
alter table chain_steps drop constraint chain_steps_status_check;
alter table chain_steps add constraint chain_steps_status_check
    check (status in ('pending', 'queued', 'waiting', 'succeeded', 'failed', 'skipped'));
-- The head commit someone approved, and who.
alter table demos add column approved_sha text;
alter table demos add column approved_by text;

-- What GitHub has been told about a demo: one comment edited in place, one deployment per
-- head commit, and the last state sent (so a repeated notification sends nothing).
create table github_feedback (
    demo_id        uuid primary key references demos (id),
    comment_id     bigint,
    deployment_id  bigint,
    deployment_sha text,
    synced         text
);

-- Live chains are few; the supersede step and the tick look only at them.
create index chains_live on chains (demo_id) where status in ('waiting', 'running', 'awaiting_approval');
create index chains_waiting on chains (created_at) where status = 'waiting';
