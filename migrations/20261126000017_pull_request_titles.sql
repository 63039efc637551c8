-- Pull request titles, for the dashboard: the newest title each event carried, written with
-- the event in the intake's statement (controller/src/db/events.rs). Unchanged titles write
-- nothing, so a busy pull request does not churn its row.
create table pull_request_titles (
    owner text not null,
    repo  text not null,
    pr    bigint not null,
    title text not null,
    primary key (owner, repo, pr)
);
