//! Pages people would rather look at, drawn on the server (SVG, no JavaScript needed): the
//! overview shows each demo's pull request title and links its pull request, author and
//! commit on GitHub; a demo's page draws
//! each chain as a timeline, its failed step marked; the hosts page draws each host's demos
//! against its capacity and its disk; the fleet page draws demos by state and the webhook
//! deliveries of the last hours.

use std::time::Duration;

use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::oidc::{self, get_with};
use demofleet_tests::stack::{Stack, StackOptions};
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_draw_the_fleet_its_hosts_and_each_chain() {
    let options = StackOptions { controller_args: vec!["--retry-delays".into(), "100ms".into()], ..Default::default() };
    let stack = Stack::start(options).await;
    let session = oidc::sign_in(&stack, "admin@example.com").await;
    let page = |path: String| {
        let (stack, session) = (&stack, &session);
        async move {
            let response = get_with(stack, &path, session).await;
            assert_eq!(response.status(), 200, "{path}");
            response.text().await.unwrap()
        }
    };

    // One demo that runs, one whose build fails.
    let repo_name = format!("pages-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let files = fixtures::static_site(&stack.services.base_image, "drawn");
    let good = repo.commit("good", &files.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>());
    let broken = format!("FROM {}\nRUN exit 3\n", stack.services.base_image);
    let bad = repo.commit("bad", &[("Dockerfile", broken.as_str())]);
    for (pr, sha) in [(1, &good), (2, &bad)] {
        let body = fixtures::numbered_pull_request("pull_request.opened.json", &repo, sha, pr);
        assert_eq!(stack.deliver("pull_request", &body).await.1.status(), 202);
    }
    let running = stack.wait_for_state(&format!("{repo_name}-fixture-owner-pr-1"), "running", DEADLINE).await;
    let failed = stack.wait_for_state(&format!("{repo_name}-fixture-owner-pr-2"), "failed", DEADLINE).await;

    // The overview: the pull request, its author and its commit, linked on GitHub.
    let overview = page(format!("/?q={repo_name}&state=all")).await;
    let base = format!("https://github.com/fixture-owner/{repo_name}");
    assert!(overview.contains(&format!(r#"<a href="{base}/pull/1">#1</a> by "#)), "{overview}");
    assert!(
        overview.contains(&format!(r#"<a href="{base}/commit/{good}"><code>{}</code></a>"#, &good[..7])),
        "{overview}"
    );
    let title = fixtures::payload("pull_request.opened.json")["pull_request"]["title"].as_str().unwrap().to_string();
    assert!(overview.contains(&format!(r#"<span class="title">{title}</span>"#)), "the title: {overview}");
    let author =
        fixtures::payload("pull_request.opened.json")["pull_request"]["user"]["login"].as_str().unwrap().to_string();
    assert!(overview.contains(&format!("by {author},")), "{overview}");

    // A demo's page: its chain along time, each reached step a bar; the failed build marked.
    let detail = page(format!("/demos/{}", failed["id"].as_str().unwrap())).await;
    let chart = svg_named(&detail, "deploy chain of generation 1: its steps along time");
    assert!(chart.contains(r#"class="bad""#) && chart.contains(">build<") && chart.contains("failed, "), "{chart}");
    assert!(chart.contains(r#"class="good""#) && chart.contains(">checkout<"), "{chart}");
    // Its kept log: the newest generation's by default, any other kept one on asking. (A
    // second generation's lines are written here as the keeper would.)
    let failed_id = Uuid::parse_str(failed["id"].as_str().unwrap()).unwrap();
    sqlx::query("insert into demo_logs (demo_id, generation, step, line) values ($1, 2, 'build', 'second try')")
        .bind(failed_id)
        .execute(&stack.db)
        .await
        .unwrap();
    let newest = page(format!("/demos/{failed_id}")).await;
    assert!(newest.contains("Kept output of generation 2") && newest.contains("[build] second try"), "{newest}");
    assert!(newest.contains(&format!(r#"<a href="/demos/{failed_id}?generation=1">generation 1</a>"#)), "{newest}");
    let first = page(format!("/demos/{failed_id}?generation=1")).await;
    assert!(first.contains("Kept output of generation 1") && !first.contains("second try"), "{first}");
    assert!(first.contains("[checkout] checking out"), "the first generation's own lines: {first}");
    let missing = get_with(&stack, &format!("/demos/{failed_id}?generation=9"), &session).await;
    assert_eq!(missing.status(), 404);

    let detail = page(format!("/demos/{}", running["id"].as_str().unwrap())).await;
    let chart = svg_named(&detail, "deploy chain of generation 1: its steps along time");
    assert!(!chart.contains(r#"class="bad""#) && chart.contains(">route<"), "{chart}");

    // The hosts page: the host's demos against its capacity, and its disk.
    let host = &stack.agents[0].host_id;
    let hosts = page("/hosts".into()).await;
    let demos = svg_named(&hosts, &format!("demos on {host}"));
    let listed = stack.get_json("/api/hosts").await;
    let capacity = listed[0]["capacity"].as_i64().unwrap();
    assert!(demos.contains(&format!(">2 / {capacity}<")), "both demos are placed there: {demos}");
    let disk = svg_named(&hosts, &format!("disk of {host}"));
    assert!(disk.contains("GiB free of"), "{disk}");

    // The fleet page: demos by state, and the deliveries of the last hours.
    let fleet = page("/fleet".into()).await;
    let states = svg_named(&fleet, "Demos by state");
    assert!(states.contains(">running<") && states.contains(">failed<"), "{states}");
    let deliveries = svg_named(&fleet, "Webhook deliveries per quarter hour");
    assert!(deliveries.contains(": 2</title>"), "two deliveries in the last quarter hour: {deliveries}");
    let outcomes = svg_named(&fleet, "Webhook deliveries by outcome");
    assert!(outcomes.contains(">deploy_queued<"), "{outcomes}");
    stack.stop().await;
}

/// The SVG chart named `title` on `page`.
fn svg_named<'a>(page: &'a str, title: &str) -> &'a str {
    let at = page
        .find(&format!(r#"aria-label="{title}""#))
        .unwrap_or_else(|| panic!("no chart named {title:?} on the page:\n{page}"));
    let start = page[..at].rfind("<svg").unwrap();
    let end = at + page[at..].find("</svg>").unwrap() + "</svg>".len();
    &page[start..end]
}
