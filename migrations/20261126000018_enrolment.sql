-- Hosts are trusted only once enrolled (issue 18, point 2). An enrolment names the broker
-- user made for the host and its NATS user (the password only as a bcrypt hash, for the
-- NATS authorization file); a revoked enrolment keeps its row, with who revoked it and when.
create table host_enrolments (
    host_id            text primary key,
    enrolled_at        timestamptz not null default now(),
    enrolled_by        text not null,
    amqp_user          text unique,
    nats_user          text,
    nats_password_hash text,
    revoked_at         timestamptz,
    revoked_by         text
);

-- Hosts already known were trusted before enrolment existed: they stay, as enrolled, with
-- the broker user the deployment gave them until now.
insert into host_enrolments (host_id, enrolled_by, amqp_user)
select id, 'grandfathered', 'agent-' || id from hosts;

-- The fleet's name, one row per database: two fleets sharing one NATS server tell their
-- hosts apart by it. The row is made by the first controller that needs it (not here, so
-- that databases copied from a migrated template do not share it).
create table fleet_identity (
    id         uuid primary key,
    created_at timestamptz not null default now(),
    single     boolean not null default true unique check (single)
);
