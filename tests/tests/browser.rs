//! The dashboard in a real browser: headless Chromium, driven over WebDriver (chromedriver),
//! signs in through the real OpenID provider's own form, finds the running demo on the
//! overview and opens it through the edge from its link there, opens its page, stops it
//! from the keyboard, and sees it leave the overview; opens a failed demo's page, reads its
//! kept build output there and downloads it through the page's link. Every
//! page visited has one `h1` and a label for every field and button. Screenshots go to
//! `DEMOFLEET_ARTIFACTS` (default `/var/tmp/demofleet-artifacts`)/browser.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use uuid::Uuid;

use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::stack::{Stack, StackOptions};
use demofleet_tests::wait;

const DEADLINE: Duration = Duration::from_secs(120);

/// chromedriver on a free port, ended with the test.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver() -> Driver {
    let port = demofleet_tests::services::free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver) is installed by scripts/test");
    let url = format!("http://127.0.0.1:{port}");
    let status = format!("{url}/status");
    wait::until("chromedriver to listen", Duration::from_secs(30), || async {
        demofleet_tests::http_client()
            .build()
            .unwrap()
            .get(&status)
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(drop)
    })
    .await;
    Driver { child, url }
}

async fn browser(driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({ "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"] }),
    );
    // chromedriver listens on loopback: plain HTTP.
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector).capabilities(capabilities).connect(&driver.url).await.expect("a browser")
}

fn artifacts() -> PathBuf {
    let root = std::env::var_os("DEMOFLEET_ARTIFACTS")
        .map_or_else(|| PathBuf::from("/var/tmp/demofleet-artifacts"), PathBuf::from);
    let dir = root.join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    std::fs::write(artifacts().join(format!("{name}.png")), png).unwrap();
}

/// Wait until the browser shows `url` and its `h1` reads `heading` (a click navigates in
/// its own time; until then the old page is still there).
async fn wait_for_page(client: &Client, url: &str, heading: &str) {
    wait::until(&format!("{url} with heading {heading:?}"), DEADLINE, || async {
        let here = client.current_url().await.ok()?;
        if here.as_str() != url {
            return None;
        }
        let h1 = client.find(Locator::Css("h1")).await.ok()?.text().await.ok()?;
        (h1 == heading).then_some(())
    })
    .await;
}

/// The page's headings and unlabelled controls, read in the browser.
async fn accessibility(client: &Client) -> (u64, Vec<String>) {
    let found = client
        .execute(
            "const unlabelled = [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
               .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                             && !(el.tagName === 'BUTTON' && el.textContent.trim()))
               .map(el => el.outerHTML);
             return [document.querySelectorAll('h1').length, unlabelled];",
            vec![],
        )
        .await
        .unwrap();
    (found[0].as_u64().unwrap(), serde_json::from_value(found[1].clone()).unwrap())
}

async fn check_page(client: &Client, name: &str) {
    screenshot(client, name).await;
    let (headings, unlabelled) = accessibility(client).await;
    assert_eq!(headings, 1, "{name}: one h1");
    assert!(unlabelled.is_empty(), "{name}: controls without a label: {unlabelled:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_signs_in_opens_demos_reads_a_failed_build_and_stops_one_in_a_browser() {
    let stack = Stack::start(StackOptions::default()).await;
    let repo_name = format!("web-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let files = fixtures::static_site(&stack.services.base_image, "seen in a browser");
    let sha = repo.commit("demo", &files.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>());
    stack.deliver("pull_request", &fixtures::pull_request("pull_request.opened.json", &repo, &sha)).await;
    let name = format!("{repo_name}-fixture-owner-pr-2");
    // A second pull request whose build fails, nobody watching.
    let broken_repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &format!("broken-{repo_name}"));
    let marker = format!("browser-build-output-{repo_name}");
    let dockerfile =
        format!("FROM {}\nRUN echo {marker}-one && echo {marker}-two && exit 3\n", stack.services.base_image);
    let broken_sha = broken_repo.commit("a build that fails", &[("Dockerfile", &dockerfile)]);
    stack.deliver("pull_request", &fixtures::pull_request("pull_request.opened.json", &broken_repo, &broken_sha)).await;
    let demo = stack.wait_for_state(&name, "running", DEADLINE).await;
    let id = demo["id"].as_str().unwrap().to_string();
    let demo_url = demo["url"].as_str().unwrap().to_string();
    let broken_name = format!("broken-{repo_name}-fixture-owner-pr-2");
    let broken = stack.wait_for_state(&broken_name, "failed", DEADLINE).await;
    let broken_id = broken["id"].as_str().unwrap().to_string();
    let email = "browser@example.com";
    let user = demofleet_tests::http_client()
        .build()
        .unwrap()
        .put(format!("{}/users/{email}", stack.services.oidc_issuer))
        .json(&json!({ "email": email, "email_verified": true, "name": "Browser Admin" }))
        .send()
        .await
        .unwrap();
    assert_eq!(user.status(), 204);

    let driver = start_driver().await;
    let client = browser(&driver).await;
    // Anonymous: the dashboard sends the browser to the provider's sign-in form.
    client.goto(&stack.url("/")).await.unwrap();
    let sub = client.wait().for_element(Locator::Css("input[name=sub]")).await.unwrap();
    assert!(client.current_url().await.unwrap().as_str().starts_with(&stack.services.oidc_issuer));
    screenshot(&client, "1-provider-sign-in").await;
    sub.send_keys(email).await.unwrap();
    client.find(Locator::XPath("//button[normalize-space()='Authorize']")).await.unwrap().click().await.unwrap();

    // Back on the overview, signed in, with the running demo listed.
    wait_for_page(&client, &stack.url("/"), "Demos").await;
    let body = client.find(Locator::Css("body")).await.unwrap().text().await.unwrap();
    assert!(body.contains(email), "signed in as {email}");
    check_page(&client, "2-overview").await;

    // The demo itself, opened from its link on the overview, through the edge.
    let open = client.find(Locator::Css(&format!("a[href='{demo_url}']"))).await.unwrap();
    open.click().await.unwrap();
    wait::until("the demo's own page", DEADLINE, || async {
        let body = client.find(Locator::Css("body")).await.ok()?.text().await.ok()?;
        body.contains("seen in a browser").then_some(())
    })
    .await;
    assert!(client.current_url().await.unwrap().as_str().starts_with(&demo_url));
    client.goto(&stack.url("/")).await.unwrap();
    wait_for_page(&client, &stack.url("/"), "Demos").await;
    let link = client.find(Locator::Css(&format!("a[href='/demos/{id}']"))).await.unwrap();
    link.click().await.unwrap();

    // The demo's page, its chain, and a Stop button worked from the keyboard.
    wait_for_page(&client, &stack.url(&format!("/demos/{id}")), &name).await;
    let page = client.find(Locator::Css("main")).await.unwrap().text().await.unwrap();
    assert!(page.contains("deploy, generation 1: succeeded"), "{page}");
    check_page(&client, "3-demo").await;
    let stop = client.find(Locator::XPath("//button[normalize-space()='Stop']")).await.unwrap();
    stop.send_keys(&String::from(char::from(Key::Enter))).await.unwrap();
    wait::until("the demo to stop", DEADLINE, || async {
        (stack.demo(&name).await?["state"] == "stopped").then_some(())
    })
    .await;
    let audit: String = sqlx::query_scalar("select actor from audit_events where action = 'stop' and demo_id = $1")
        .bind(Uuid::parse_str(&id).unwrap())
        .fetch_one(&stack.db)
        .await
        .unwrap();
    assert_eq!(audit, email, "the stop is recorded in the admin's name");

    // It has left the overview.
    client.goto(&stack.url("/")).await.unwrap();
    wait_for_page(&client, &stack.url("/"), "Demos").await;
    let gone: Value = client
        .execute(&format!("return document.querySelectorAll(\"a[href='/demos/{id}']\").length"), vec![])
        .await
        .unwrap();
    assert_eq!(gone, json!(0));
    screenshot(&client, "4-overview-after-stop").await;
    // The failed demo's page shows its kept build output, and the download link gives it whole.
    client.goto(&stack.url(&format!("/demos/{broken_id}"))).await.unwrap();
    wait_for_page(&client, &stack.url(&format!("/demos/{broken_id}")), &broken_name).await;
    let page = client.find(Locator::Css("main")).await.unwrap().text().await.unwrap();
    assert!(page.contains(&format!("[build] {marker}-two")), "{page}");
    check_page(&client, "6-failed-demo").await;
    let download = client.find(Locator::XPath("//a[normalize-space()='download generation 1']")).await.unwrap();
    let href = download.attr("href").await.unwrap().expect("a link");
    let text = client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(arguments[0]).then(r => r.text()).then(done, e => done('failed: ' + e));",
            vec![json!(href)],
        )
        .await
        .unwrap();
    let text = text.as_str().unwrap_or_default();
    assert!(text.contains(&format!("[g1 build] {marker}-one")) && text.contains(&format!("{marker}-two")), "{text}");

    for path in ["/hosts", "/fleet", "/start", "/tokens", "/deliveries", "/approvals"] {
        client.goto(&stack.url(path)).await.unwrap();
        client.wait().for_element(Locator::Css("main h1")).await.unwrap();
        check_page(&client, &format!("5-{}", path.trim_start_matches('/'))).await;
    }
    client.close().await.unwrap();
    stack.stop().await;
}
