//! What the webhook endpoint refuses, and that a refusal stores and queues nothing.

use demofleet_tests::fixtures::{self, sign};
use demofleet_tests::spy::Spy;
use demofleet_tests::stack::{Stack, StackOptions};
use uuid::Uuid;

/// Nothing stored, nothing waiting to be sent (the outbox), and nothing sent to the
/// controller's or the agent's queue since `spy` started.
async fn nothing_stored_or_queued(stack: &Stack, spy: &Spy) {
    for table in ["webhook_deliveries", "demos", "chains", "outbox"] {
        assert_eq!(stack.count(table).await, 0, "{table} is empty");
    }
    assert_eq!(spy.copies().await, 0, "messages were sent to the controller's or the agent's queue");
}

async fn error_of(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.unwrap();
    body["error"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_signatures_are_refused_and_nothing_is_kept() {
    let stack = Stack::start(StackOptions::default()).await;
    let spy = Spy::start(&stack).await;
    let body = serde_json::to_vec(&fixtures::payload("pull_request.opened.json")).unwrap();
    let delivery = Uuid::new_v4().to_string();

    let unsigned = stack.webhook("pull_request", &delivery, "application/json", None, body.clone()).await;
    assert_eq!(unsigned.status(), 401);
    assert!(error_of(unsigned).await.contains("missing X-Hub-Signature-256"));

    let wrong = sign("not the secret", &body);
    let forged = stack.webhook("pull_request", &delivery, "application/json", Some(&wrong), body.clone()).await;
    assert_eq!(forged.status(), 401);
    assert!(error_of(forged).await.contains("does not match"));

    // A signature of another body (a replay onto an edited payload) fails too.
    let signature = sign(&stack.secret, b"{}");
    let replayed = stack.webhook("pull_request", &delivery, "application/json", Some(&signature), body.clone()).await;
    assert_eq!(replayed.status(), 401);

    let sha1 = "sha1=7d38cdd689735b008b3c702edd92eea23791c5f6";
    let legacy = stack.webhook("pull_request", &delivery, "application/json", Some(sha1), body).await;
    assert_eq!(legacy.status(), 401);

    nothing_stored_or_queued(&stack, &spy).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_precise_answer() {
    let options =
        StackOptions { controller_args: vec!["--webhook-max-bytes".into(), "65536".into()], ..Default::default() };
    let stack = Stack::start(options).await;
    let spy = Spy::start(&stack).await;

    // Body over the limit → 413.
    let huge = vec![b' '; 70_000];
    let response = stack.deliver_raw("pull_request", "d-huge", &huge).await;
    assert_eq!(response.status(), 413);

    // Unsupported content type → 415.
    let body = br#"{"zen":"x"}"#.to_vec();
    let signature = sign(&stack.secret, &body);
    let response = stack.webhook("ping", "d-type", "text/plain", Some(&signature), body).await;
    assert_eq!(response.status(), 415);

    // Wrongly typed and missing fields → 400 naming the field.
    let mut payload = fixtures::payload("pull_request.opened.json");
    payload["number"] = "two".into();
    let (_, response) = stack.deliver("pull_request", &payload).await;
    assert_eq!(response.status(), 400);
    assert!(error_of(response).await.contains("`number`"));
    let mut payload = fixtures::payload("pull_request.opened.json");
    payload["pull_request"]["head"].as_object_mut().unwrap().remove("sha");
    let (_, response) = stack.deliver("pull_request", &payload).await;
    assert_eq!(response.status(), 400);
    assert!(error_of(response).await.contains("pull_request.head"));

    // Names that could escape a folder or a DNS label → 400.
    let mut payload = fixtures::payload("pull_request.opened.json");
    payload["repository"]["name"] = "../../etc".into();
    let (_, response) = stack.deliver("pull_request", &payload).await;
    assert_eq!(response.status(), 400);
    assert!(error_of(response).await.contains("repository name"));

    // Missing delivery header → 400.
    let body = serde_json::to_vec(&fixtures::payload("ping.json")).unwrap();
    let signature = sign(&stack.secret, &body);
    let response = stack.webhook("ping", "", "application/json", Some(&signature), body).await;
    assert_eq!(response.status(), 400);

    nothing_stored_or_queued(&stack, &spy).await;

    // What is accepted is recorded: ping → 200, an unused event → 202, both with outcomes.
    let (ping, response) = stack.deliver("ping", &fixtures::payload("ping.json")).await;
    assert_eq!(response.status(), 200);
    let (other, response) = stack.deliver("issues", &serde_json::json!({"action": "opened"})).await;
    assert_eq!(response.status(), 202);
    // GitHub's form encoding is accepted too.
    let form =
        format!("payload={}", fixtures::urlencode(&serde_json::to_string(&fixtures::payload("ping.json")).unwrap()));
    let signature = sign(&stack.secret, form.as_bytes());
    let formed = Uuid::new_v4().to_string();
    let response =
        stack.webhook("ping", &formed, "application/x-www-form-urlencoded", Some(&signature), form.into_bytes()).await;
    assert_eq!(response.status(), 200);
    let outcomes: Vec<(String, String)> =
        sqlx::query_as("select delivery_id, outcome from webhook_deliveries order by received_at")
            .fetch_all(&stack.db)
            .await
            .unwrap();
    assert_eq!(outcomes, [(ping, "ping".into()), (other, "ignored".into()), (formed, "ping".into())]);
    stack.stop().await;
}

/// A `pull_request.opened` delivery for `owner/repo#pr`.
fn opened(owner: &str, repo: &str, pr: u64) -> serde_json::Value {
    let mut body = fixtures::payload("pull_request.opened.json");
    body["number"] = pr.into();
    body["pull_request"]["number"] = pr.into();
    body["pull_request"]["head"]["sha"] = format!("{pr:040x}").into();
    for path in ["/repository", "/pull_request/head/repo", "/pull_request/base/repo"] {
        let target = body.pointer_mut(path).unwrap();
        target["name"] = repo.into();
        target["owner"]["login"] = owner.into();
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_fails_fails_alone_and_its_batch_is_kept() {
    use futures::StreamExt;
    let stack = Stack::start(StackOptions::default()).await;
    // `clash` of `fixture-owner` and `clash-fixture` of `owner` both name their demo
    // `clash-fixture-owner-pr-1`.
    let (_, first) = stack.deliver("pull_request", &opened("fixture-owner", "clash", 1)).await;
    assert_eq!(first.status(), 202);

    // Sent together, so the intake records them in shared batches.
    let mut bodies: Vec<serde_json::Value> = (2..=40).map(|pr| opened("fixture-owner", "clash", pr)).collect();
    bodies.insert(17, opened("owner", "clash-fixture", 1));
    let answers: Vec<(String, u16, serde_json::Value)> = futures::stream::iter(bodies.iter())
        .map(|body| async {
            let (delivery, response) = stack.deliver("pull_request", body).await;
            let status = response.status().as_u16();
            (delivery, status, response.json().await.unwrap())
        })
        .buffer_unordered(40)
        .collect()
        .await;
    let refused: Vec<&(String, u16, serde_json::Value)> = answers.iter().filter(|(_, s, _)| *s != 202).collect();
    assert_eq!(refused.len(), 1, "only the clashing event is refused: {refused:?}");
    let (clashing, status, body) = refused[0];
    assert_eq!(*status, 409);
    assert!(body["error"].as_str().unwrap().contains("clash-fixture-owner-pr-1 is taken"), "{body}");

    // Everything else was kept: 40 deliveries, 40 demos, and nothing of the refused one.
    assert_eq!(stack.count("webhook_deliveries").await, 40);
    assert_eq!(stack.count("demos").await, 40);
    let kept: i64 = sqlx::query_scalar("select count(*) from webhook_deliveries where delivery_id = $1")
        .bind(clashing)
        .fetch_one(&stack.db)
        .await
        .unwrap();
    assert_eq!(kept, 0);
    let metrics = stack.get("/metrics").await.text().await.unwrap();
    let events: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("demofleet_intake_events_total "))
        .and_then(|v| v.parse().ok())
        .expect("the intake's event counter");
    assert!(events >= 40.0, "{events}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_events_of_one_pull_request_at_once_are_all_answered() {
    use futures::StreamExt;
    let stack = Stack::start(StackOptions::default()).await;
    // A pull request's deploys share batches and apply in their order; none may be left
    // waiting when the burst ends, and the newest decides.
    let bodies: Vec<serde_json::Value> = (0..30u64)
        .map(|i| {
            let mut body = opened("fixture-owner", "together", 1);
            body["pull_request"]["head"]["sha"] = format!("{:040x}", i + 1).into();
            body["pull_request"]["updated_at"] = format!("2026-11-26T10:00:{i:02}Z").into();
            body
        })
        .collect();
    let statuses: Vec<u16> = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        futures::stream::iter(bodies.iter())
            .map(|body| async { stack.deliver("pull_request", body).await.1.status().as_u16() })
            .buffer_unordered(30)
            .collect(),
    )
    .await
    .expect("every delivery answered");
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    let demo = stack.demo("together-fixture-owner-pr-1").await.unwrap();
    assert_eq!(demo["sha"], format!("{:040x}", 30), "the newest event decides: {demo}");
    stack.stop().await;
}

/// The intake keeps each pull request's newest title, and an event that repeats the title
/// leaves its row alone: no new version, not even a lock (`xmax` stays 0). In a transaction
/// of the test's own, so the controller's tick sees none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_title_is_written_only_when_it_changes() {
    let stack = Stack::start(StackOptions { agents: 0, ..Default::default() }).await;
    let repo = format!("title-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let mut tx = stack.db.begin().await.unwrap();
    let mut stored = Vec::new();
    for (n, title) in [(1, "First"), (2, "First"), (3, "Second")] {
        deploy(&mut tx, &repo, n, title).await;
        let row: (String, String) = sqlx::query_as("select title, xmax::text from pull_request_titles where repo = $1")
            .bind(&repo)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        stored.push(row);
    }
    assert_eq!(stored[0], ("First".to_string(), "0".to_string()));
    assert_eq!(stored[1], ("First".to_string(), "0".to_string()), "the same title again: the row untouched");
    assert_eq!(stored[2].0, "Second", "a new title is written");
    tx.rollback().await.unwrap();
    stack.stop().await;
}

/// One batch holding an event of every kind gets its answers in its order, and each
/// delivery its outcome: the answers the intake's statement builds itself (a recorded-only
/// delivery, a duplicate, an applied deploy) and those the function gives one at a time (a
/// stale deploy, a teardown) side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_every_kind_is_answered_in_its_order() {
    use demofleet_controller::db::chains;
    use demofleet_controller::db::events::{record, Event, Kind};

    let stack = Stack::start(StackOptions { agents: 0, ..Default::default() }).await;
    let repo = format!("mixed-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let delivery = |n: u32| format!("{repo}-{n}");
    let event = |kind: Kind, pr: i64, n: u32, seconds: i64| {
        Event::pull_request(kind, request(&repo, pr, n.into(), "A title"), "github:octocat", at(seconds))
    };
    let mut tx = stack.db.begin().await.unwrap();
    let first = [
        event(Kind::Deploy, 1, 1, 10).delivered(&delivery(1), "pull_request", "synchronize"),
        event(Kind::Deploy, 2, 2, 10).delivered(&delivery(2), "pull_request", "opened"),
    ];
    let answers = record(&mut *tx, &first).await.unwrap();
    assert!(answers.iter().all(|a| a.as_ref().unwrap().outcome == "deploy_queued"), "{answers:?}");
    let batch = [
        Event::record(&delivery(3), "ping", None, "ping", None),
        event(Kind::Deploy, 1, 4, 5).delivered(&delivery(4), "pull_request", "synchronize"),
        event(Kind::Deploy, 1, 1, 10).delivered(&delivery(1), "pull_request", "synchronize"),
        event(Kind::Teardown, 2, 5, 20).delivered(&delivery(5), "pull_request", "closed"),
        event(Kind::Deploy, 3, 6, 10).delivered(&delivery(6), "pull_request", "opened"),
    ];
    let answers: Vec<_> = record(&mut *tx, &batch).await.unwrap().into_iter().map(Result::unwrap).collect();
    let outcomes: Vec<&str> = answers.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["ping", "stale", "duplicate", "teardown_queued", "deploy_queued"], "{answers:?}");
    let demo = |i: usize| answers[i].demo.as_ref().map(|d| (d.name.clone(), d.generation));
    let name = |pr: i64| format!("{repo}-fixture-owner-pr-{pr}");
    assert_eq!((demo(1), demo(3), demo(4)), (Some((name(1), 1)), Some((name(2), 2)), Some((name(3), 1))));
    // A teardown's chain is made with it; a deploy's when its generation begins.
    assert!(answers[3].chain.is_some() && answers[4].chain.is_none(), "{answers:?}");
    let stopping = answers[3].demo.as_ref().unwrap();
    let begun = chains::begin_generation(&mut *tx, stopping.id, stopping.generation).await.unwrap();
    assert!(begun.is_none(), "a demo to stop begins no deploy");
    let kept: Vec<(String, String, bool)> = sqlx::query_as(
        "select delivery_id, outcome, chain_id is not null from webhook_deliveries where delivery_id like $1 || '-%'
         order by delivery_id",
    )
    .bind(&repo)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let kept: Vec<(&str, &str, bool)> = kept.iter().map(|(d, o, c)| (&d[repo.len() + 1..], o.as_str(), *c)).collect();
    assert_eq!(
        kept,
        [
            ("1", "deploy_queued", false),
            ("2", "deploy_queued", false),
            ("3", "ping", false),
            ("4", "stale", false),
            ("5", "teardown_queued", true),
            ("6", "deploy_queued", false)
        ]
    );
    tx.rollback().await.unwrap();
    stack.stop().await;
}

/// Pull requests pushed to again and again: each event supersedes the chain begun for the
/// generation before it, which leaves a dead entry in the index of live chains
/// (`chains_live`). The intake's lookups of live chains are index scans, which mark such
/// entries dead for the next insert to remove, so the index stays a page or two without
/// autovacuum (off here for `chains`); the bitmap scans the planner chose before for batches
/// of several demos left every entry, and each event read them all (migration 29).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_requests_pushed_to_again_and_again_keep_the_index_of_live_chains_small() {
    use demofleet_controller::db::chains;
    use demofleet_controller::db::events::{record, Event, Kind};

    let stack = Stack::start(StackOptions { agents: 0, ..Default::default() }).await;
    sqlx::query("alter table chains set (autovacuum_enabled = false)").execute(&stack.db).await.unwrap();
    let repo = format!("pushes-{}", &Uuid::new_v4().simple().to_string()[..8]);
    // A history of 50,000 finished chains, not yet analyzed: the planner then guesses a few
    // live chains a demo, where a bitmap scan costs about what an index scan does.
    sqlx::query(
        "with old as (
             insert into demos (id, owner, repo, pr, name, desired, state, sha, clone_url, github_user)
             values (gen_random_uuid(), 'history', $1, 1, $1 || '-history-pr-1', 'stopped', 'stopped', 'x', 'x', 'x')
             returning id)
         insert into chains (id, demo_id, generation, kind, status, finished_at)
         select gen_random_uuid(), old.id, g, 'deploy', 'succeeded', now() from old, generate_series(1, 50000) g",
    )
    .bind(&repo)
    .execute(&stack.db)
    .await
    .unwrap();
    let event = |pr: i64, n: i64| {
        Event::pull_request(Kind::Deploy, request(&repo, pr, n, "A title"), "github:octocat", at(n)).delivered(
            &format!("{repo}-{pr}-{n}"),
            "pull_request",
            "synchronize",
        )
    };
    // 800 batches of one event for each of 8 pull requests, each batch its own transaction,
    // each demo's generation begun after it as the starter would.
    for n in 1..=800 {
        let batch: Vec<Event> = (1..=8).map(|pr| event(pr, n)).collect();
        for answer in record(&stack.db, &batch).await.unwrap() {
            let answer = answer.unwrap();
            assert_eq!(answer.outcome, "deploy_queued");
            let demo = answer.demo.unwrap();
            assert!(chains::begin_generation(&stack.db, demo.id, demo.generation).await.unwrap().is_some());
        }
    }
    let (pages, live): (i64, i64) = sqlx::query_as(
        "select pg_relation_size('chains_live') / current_setting('block_size')::int8,
                (select count(*) from chains where status in ('waiting', 'running', 'awaiting_approval'))",
    )
    .fetch_one(&stack.db)
    .await
    .unwrap();
    assert_eq!(live, 8, "only each pull request's newest chain is live");
    // 6,400 entries fill about a dozen pages; the meta page and a leaf or two hold the live ones.
    assert!(pages <= 4, "chains_live holds {pages} pages after 800 events of each of 8 pull requests");
    stack.stop().await;
}

/// Several deploys of one pull request in one batch apply as they would one at a time: each
/// not older than what came before it gets the next generation, an older one is stale, and
/// the demo's pusher is whoever brought its head commit. No chain is made then; the newest
/// generation's begins after (migration 0030), named by the delivery that brought it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_of_one_pull_request_in_one_batch_apply_in_their_order() {
    use demofleet_controller::db::chains;
    use demofleet_controller::db::events::{record, Event, Kind};

    let stack = Stack::start(StackOptions { agents: 0, ..Default::default() }).await;
    let repo = format!("burst-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let delivery = |n: u32| format!("{repo}-{n}");
    let event = |pr: i64, n: u32, commit: i64, seconds: i64, sender: &str| {
        let mut request = request(&repo, pr, commit, "A title");
        request.pushed_by = Some(sender.into());
        Event::pull_request(Kind::Deploy, request, &format!("github:{sender}"), at(seconds)).delivered(
            &delivery(n),
            "pull_request",
            "synchronize",
        )
    };
    let mut tx = stack.db.begin().await.unwrap();
    let first = record(&mut *tx, &[event(1, 1, 1, 10, "alice")]).await.unwrap().pop().unwrap().unwrap();
    let batch = [
        event(1, 2, 2, 20, "alice"),
        event(1, 3, 9, 15, "mallory"),
        event(1, 4, 2, 20, "bob"),
        event(2, 5, 7, 10, "dora"),
        event(1, 6, 3, 30, "carol"),
        event(1, 7, 3, 30, "erin"),
        event(2, 8, 8, 5, "dora"),
        event(2, 9, 8, 10, "frank"),
    ];
    let answers: Vec<_> = record(&mut *tx, &batch).await.unwrap().into_iter().map(Result::unwrap).collect();
    let outcomes: Vec<(&str, Option<i64>)> =
        answers.iter().map(|a| (a.outcome.as_str(), a.demo.as_ref().map(|d| d.generation))).collect();
    assert_eq!(
        outcomes,
        [
            ("deploy_queued", Some(2)),
            ("stale", Some(5)),
            ("deploy_queued", Some(3)),
            ("deploy_queued", Some(1)),
            ("deploy_queued", Some(4)),
            ("deploy_queued", Some(5)),
            ("stale", Some(2)),
            ("deploy_queued", Some(2)),
        ],
        "{answers:?}"
    );
    let demos: Vec<(i64, String, Option<String>, time::OffsetDateTime, uuid::Uuid)> =
        sqlx::query_as("select generation, sha, pushed_by, event_at, id from demos where repo = $1 order by name")
            .bind(&repo)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    // Carol brought commit 3 and Erin pushed it again; Frank's event brought commit 8 after
    // Dora's event of it was found stale.
    assert_eq!(
        demos.iter().map(|(g, s, p, t, _)| (*g, s.clone(), p.clone(), Some(*t))).collect::<Vec<_>>(),
        [
            (5, format!("{:040x}", 3), Some("carol".into()), at(30)),
            (2, format!("{:040x}", 8), Some("frank".into()), at(10))
        ]
    );
    assert_eq!(demos[0].4, first.demo.unwrap().id, "the demo the first batch made");
    assert!(answers.iter().all(|a| a.chain.is_none()), "recording makes no deploy chain: {answers:?}");
    // Each demo's newest generation begins as one waiting chain, named by the delivery that
    // brought it; an older generation, or the same one again, begins nothing.
    let mut begun = Vec::new();
    for (generation, _, _, _, demo) in &demos {
        assert!(chains::begin_generation(&mut *tx, *demo, generation - 1).await.unwrap().is_none());
        let chain = chains::begin_generation(&mut *tx, *demo, *generation).await.unwrap().expect("begun");
        // The chain as made: what the start goes on with, without reading it again.
        let made = (chain.demo_id, chain.generation, chain.kind.as_str(), chain.status.as_str());
        assert_eq!(made, (*demo, *generation, "deploy", "waiting"));
        begun.push(chain.id);
        assert!(chains::begin_generation(&mut *tx, *demo, *generation).await.unwrap().is_none(), "begun once");
    }
    let made: Vec<(uuid::Uuid, i64, String, Option<String>)> = sqlx::query_as(
        "select c.id, c.generation, c.status, c.delivery_id from chains c join demos d on d.id = c.demo_id
         where d.repo = $1 order by d.name",
    )
    .bind(&repo)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert_eq!(
        made,
        [(begun[0], 5, "waiting".into(), Some(delivery(7))), (begun[1], 2, "waiting".into(), Some(delivery(9)))]
    );
    let kept: Vec<(String, Option<uuid::Uuid>)> = sqlx::query_as(
        "select outcome, chain_id from webhook_deliveries where delivery_id like $1 || '-%' order by delivery_id",
    )
    .bind(&repo)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    // Only the deliveries that brought a begun generation name a chain.
    let expected: Vec<(String, Option<uuid::Uuid>)> = std::iter::once("deploy_queued")
        .chain(answers.iter().map(|a| a.outcome.as_str()))
        .enumerate()
        .map(|(i, outcome)| {
            let chain = match i + 1 {
                7 => Some(begun[0]),
                9 => Some(begun[1]),
                _ => None,
            };
            (outcome.to_string(), chain)
        })
        .collect();
    assert_eq!(kept, expected);
    // Each generation begun is audited as started by whoever asked for it (migration 0031);
    // the events it replaced started nothing.
    let audited: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "select a.actor, a.detail->>'generation', a.detail->>'delivery' from audit_events a
         join demos d on d.id = a.demo_id where d.repo = $1 and a.action = 'start' order by d.name",
    )
    .bind(&repo)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let started = |actor: &str, generation: &str, n: u32| (actor.into(), Some(generation.into()), Some(delivery(n)));
    assert_eq!(audited, [started("github:erin", "5", 7), started("github:frank", "2", 9)]);
    tx.rollback().await.unwrap();
    stack.stop().await;
}

/// A generation recorded but never handed to a starter (its controller stopped between the
/// commit and the start) is begun by the tick once it has waited its grace: one chain, named
/// by the delivery that brought it, and that delivery naming it; later ticks begin it no
/// more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tick_begins_a_generation_no_starter_began() {
    use demofleet_controller::db::events::{record, Event, Kind};
    use std::time::Duration;

    let stack = Stack::start(StackOptions { agents: 0, ..Default::default() }).await;
    let repo = format!("orphan-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let delivery = format!("{repo}-1");
    // Recorded as the intake's writer records it, but not handed to its starter.
    let event = Event::pull_request(Kind::Deploy, request(&repo, 1, 1, "A title"), "github:octocat", at(10)).delivered(
        &delivery,
        "pull_request",
        "opened",
    );
    let recorded_at = std::time::Instant::now();
    let demo = record(&stack.db, &[event]).await.unwrap().pop().unwrap().unwrap().demo.unwrap();
    let chain_of = |delivery: String| {
        let db = stack.db.clone();
        async move {
            sqlx::query_as::<_, (Uuid, i64, Option<String>)>(
                "select c.id, c.generation, c.delivery_id from webhook_deliveries w join chains c on c.id = w.chain_id
                 where w.delivery_id = $1",
            )
            .bind(delivery)
            .fetch_optional(&db)
            .await
            .unwrap()
        }
    };
    let (chain, generation, named) =
        demofleet_tests::wait::until("the tick begins the generation", Duration::from_secs(30), || {
            chain_of(delivery.clone())
        })
        .await;
    assert!(recorded_at.elapsed() >= Duration::from_secs(5), "begun before its grace ran out");
    assert_eq!((generation, named.as_deref()), (demo.generation, Some(delivery.as_str())));
    // Several ticks later, still the one chain.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let chains: Vec<Uuid> = sqlx::query_scalar("select id from chains where demo_id = $1")
        .bind(demo.id)
        .fetch_all(&stack.db)
        .await
        .unwrap();
    assert_eq!(chains, [chain]);
    stack.stop().await;
}

/// An event's time, `seconds` into a fixed day.
fn at(seconds: i64) -> Option<time::OffsetDateTime> {
    Some(time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000) + time::Duration::seconds(seconds))
}

/// A deploy request for pull request `pr` of `repo` at commit `n`, carrying `title`.
fn request(repo: &str, pr: i64, n: i64, title: &str) -> demofleet_controller::db::demos::DeployRequest {
    demofleet_controller::db::demos::DeployRequest {
        owner: "fixture-owner".into(),
        repo: repo.into(),
        pr,
        name: format!("{repo}-fixture-owner-pr-{pr}"),
        sha: format!("{n:040x}"),
        clone_url: format!("https://github.com/fixture-owner/{repo}.git"),
        github_user: "octocat".into(),
        pushed_by: None,
        title: Some(title.into()),
    }
}

/// Record deploy event `n` of pull request 1 of `repo` (delivery `<repo>-<n>`, generation
/// `n`), carrying `title`, as the intake records a batch.
async fn deploy(db: &mut sqlx::PgConnection, repo: &str, n: i64, title: &str) {
    use demofleet_controller::db::events::{record, Event, Kind};

    let event = Event::pull_request(Kind::Deploy, request(repo, 1, n, title), "github:octocat", None).delivered(
        &format!("{repo}-{n}"),
        "pull_request",
        "synchronize",
    );
    let answer = record(db, &[event]).await.unwrap().pop().unwrap().unwrap();
    assert_eq!(answer.outcome, "deploy_queued", "event {n}: {answer:?}");
    assert_eq!(answer.demo.as_ref().map(|d| d.generation), Some(n), "event {n}: {answer:?}");
}
