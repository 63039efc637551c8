-- Sign-in hardening (issue 23, point 6).

-- The browser that began a sign-in: the SHA-256 of the random value in its sign-in cookie.
-- The callback is refused unless the same browser brings it back (login CSRF).
alter table login_attempts add column browser bytea;

-- Gate tickets already traded for a cookie, kept until they expire: each is good once.
create table gate_tickets (
    id         text primary key,
    expires_at timestamptz not null
);
