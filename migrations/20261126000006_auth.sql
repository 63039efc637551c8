-- People signed in through the OpenID provider. The cookie holds a random token; only its
-- SHA-256 is kept here, so a copy of this table opens no session.
create table sessions (
    token_hash bytea primary key,
    subject    text not null,
    email      text not null,
    name       text,
    groups     jsonb not null default '[]',
    -- Every form that changes anything carries it.
    csrf       text not null,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null
);
create index sessions_expiry on sessions (expires_at);

-- Sign-ins under way: what the provider's answer is checked against (state), and what
-- finishing needs (nonce, PKCE verifier, where to go next). Used once, kept minutes.
create table login_attempts (
    state      text primary key,
    nonce      text not null,
    verifier   text not null,
    next       text not null,
    created_at timestamptz not null default now()
);

-- Keys the controller makes for itself on first start and every replica shares (the key
-- that signs preview-gate cookies).
create table signing_keys (
    name       text primary key,
    key        bytea not null,
    created_at timestamptz not null default now()
);

-- Preview URLs of the repository's demos only for people signed in (the SSO gate).
alter table repo_settings add column gated boolean not null default false;
