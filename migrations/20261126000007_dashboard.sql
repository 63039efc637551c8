-- API tokens that admins make in the dashboard, for scripts: only a SHA-256 of each is kept.
create table api_tokens (
    id           uuid primary key,
    name         text not null,
    token_hash   bytea not null unique,
    created_by   text not null,
    created_at   timestamptz not null default now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);

-- A demo started by hand may be kept quiet on GitHub (no deployment, status or comment).
alter table demos add column notify boolean not null default true;

create index demos_overview on demos (created_at desc, id);
