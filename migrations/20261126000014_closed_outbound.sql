-- A repository's previews may be kept from opening connections beyond their host (the
-- "internet"): repo_settings.closed_outbound, off unless an admin sets it. Each demo
-- carries its repository's choice (demos.closed_outbound) to the agent in its step
-- messages, which puts the demo on a network whose bridge the host's firewall policy
-- closes (dist/firewall/demofleet-firewall, bridges named dfc*): set for new demos here,
-- and by the settings' update for existing ones (from their next launch).
alter table repo_settings add column closed_outbound boolean not null default false;
alter table demos add column closed_outbound boolean not null default false;

create function demofleet_demo_closed_outbound() returns trigger
language plpgsql as $$
begin
    new.closed_outbound := coalesce(
        (select s.closed_outbound from repo_settings s where s.owner = new.owner and s.repo = new.repo), false);
    return new;
end
$$;

create trigger demos_closed_outbound before insert on demos
    for each row execute function demofleet_demo_closed_outbound();
