-- Webhook deliveries and audit events name their demo without a foreign key. Demos are
-- never deleted (a stopped demo stays, with its history), and every row of these two logs is
-- written by a statement that has just written or locked its demo, so the key guarded
-- nothing; but each insert ran the key's check, a query of its own per row, and the intake
-- writes one row of each per deploy event. A log may outlive what it names; the id stays a
-- plain reference. `chains`, the model's own rows, keep theirs.
alter table webhook_deliveries drop constraint webhook_deliveries_demo_id_fkey;
alter table audit_events drop constraint audit_events_demo_id_fkey;
