-- Logs that last (issue 21, point 1): every line the agents publish for a demo (checkout,
-- build, launch, health and the running container's output), kept per demo, generation and
-- step, so that a failed build's output outlives the agent and the browser that watched it.
-- The controller bounds them (DEMOFLEET_LOG_KEEP_BYTES per generation, the newest
-- DEMOFLEET_LOG_KEEP_GENERATIONS generations); they go with their demo. `id` orders the
-- lines and is the server-sent event id that `Last-Event-ID` resumes after.
create table demo_logs (
    id          bigserial primary key,
    demo_id     uuid not null references demos (id) on delete cascade,
    generation  bigint not null,
    step        text not null,
    line        text not null,
    at          timestamptz not null default now()
);
create index demo_logs_demo on demo_logs (demo_id, id);
create index demo_logs_generation on demo_logs (demo_id, generation, id);
