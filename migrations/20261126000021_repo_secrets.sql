-- Environment variables an admin sets for a repository's previews (issue 20, point 3). Values
-- are secrets: stored sealed (XChaCha20-Poly1305 under the controller's
-- DEMOFLEET_SECRETS_KEY_FILE, a random nonce per value, owner/repo/name as associated data),
-- never in clear; only names are ever shown back.
create table repo_secrets (
    owner text not null,
    repo text not null,
    name text not null,
    sealed bytea not null,
    updated_by text not null,
    updated_at timestamptz not null default now(),
    primary key (owner, repo, name)
);

-- A preview of a fork (its head repository is not the base one) gets the repository's
-- secrets only where an admin shares them with forks.
alter table repo_settings add column secrets_for_forks boolean not null default false;
