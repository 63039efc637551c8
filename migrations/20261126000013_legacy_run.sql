-- The legacy `./run` mode runs a repository's own script on the agent's host, so it is an
-- explicit choice per repository: repo_settings.legacy_run, off unless an admin sets it.
-- Each demo carries its repository's choice (demos.legacy_run), which its step messages pass
-- to the agent: set for new demos here, and by the settings' update for existing ones.
alter table repo_settings add column legacy_run boolean not null default false;
alter table demos add column legacy_run boolean not null default false;

create function demofleet_demo_legacy_run() returns trigger
language plpgsql as $$
begin
    new.legacy_run := coalesce(
        (select s.legacy_run from repo_settings s where s.owner = new.owner and s.repo = new.repo), false);
    return new;
end
$$;

create trigger demos_legacy_run before insert on demos
    for each row execute function demofleet_demo_legacy_run();
