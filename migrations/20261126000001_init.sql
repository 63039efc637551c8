-- The state of record of the fleet: hosts, demos, chains and their steps, webhook
-- deliveries, and the outbox of broker messages not yet confirmed by RabbitMQ.

create table hosts (
    id            text primary key,
    -- Where the edge reaches this host's demos.
    address       text not null,
    capacity      integer not null check (capacity >= 0),
    agent_version text not null default '',
    draining      boolean not null default false,
    first_seen    timestamptz not null default now(),
    last_seen     timestamptz not null default now(),
    -- The newest heartbeat's inventory: demo containers as Docker reports them.
    inventory     jsonb not null default '[]'
);

create table demos (
    id          uuid primary key,
    owner       text not null,
    repo        text not null,
    pr          bigint not null check (pr > 0),
    name        text not null unique,
    -- What the newest event asks for.
    desired     text not null check (desired in ('running', 'stopped')),
    state       text not null check (state in ('pending', 'awaiting_approval', 'starting', 'running',
                                               'sleeping', 'failed', 'stopping', 'stopped')),
    -- Bumped by every event that changes the desired state or the commit.
    generation  bigint not null default 0,
    sha         text not null,
    clone_url   text not null,
    github_user text not null,
    host_id     text references hosts (id),
    -- Port on the host's address where the demo answers, once launched.
    host_port   integer,
    -- True while the edge and Traefik should send traffic to it.
    routed      boolean not null default false,
    error       text,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now(),
    unique (owner, repo, pr)
);
create index demos_host on demos (host_id);

create table webhook_deliveries (
    delivery_id text primary key,
    event       text not null,
    action      text,
    received_at timestamptz not null default now(),
    -- What became of it: 'deploy_queued', 'teardown_queued', 'ignored', 'ping', ...
    outcome     text not null,
    detail      text,
    demo_id     uuid references demos (id)
);

create table chains (
    id          uuid primary key,
    demo_id     uuid not null references demos (id),
    generation  bigint not null,
    kind        text not null check (kind in ('deploy', 'teardown')),
    status      text not null check (status in ('waiting', 'running', 'succeeded', 'failed', 'superseded')),
    delivery_id text references webhook_deliveries (delivery_id),
    error       text,
    created_at  timestamptz not null default now(),
    finished_at timestamptz
);
create index chains_demo on chains (demo_id, generation);

create table chain_steps (
    chain_id    uuid not null references chains (id) on delete cascade,
    position    integer not null,
    name        text not null,
    status      text not null check (status in ('pending', 'queued', 'succeeded', 'failed', 'skipped')),
    attempts    integer not null default 0,
    error       text,
    output      jsonb,
    queued_at   timestamptz,
    finished_at timestamptz,
    primary key (chain_id, position)
);

-- Messages committed with the state change that caused them, published after commit and
-- deleted once RabbitMQ confirms them: a crash between commit and publish loses nothing.
create table outbox (
    id          bigserial primary key,
    routing_key text not null,
    payload     jsonb not null,
    created_at  timestamptz not null default now()
);
