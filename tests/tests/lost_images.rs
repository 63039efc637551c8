//! A demo's image removed from its host between its build and its launch (someone pruned
//! the host's images): the launch builds it again and runs it, where it used to fail each
//! of its tries the same way ("no image of generation N").

use demofleet_common::wire::{Step, StepOutcome, StepOutput};
use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::host::Engine;
use demofleet_tests::lone_agent::LoneAgent;
use demofleet_tests::services::Services;
use uuid::Uuid;

fn succeeded(step: Step, outcome: &StepOutcome) -> StepOutput {
    match outcome {
        StepOutcome::Succeeded(output) => output.clone(),
        other => panic!("{} did not succeed: {other:?}", step.as_str()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_whose_image_is_gone_builds_it_again() {
    let _time_limit = demofleet_tests::time_limit::start();
    let services = Services::from_env();
    let mut agent = LoneAgent::start(&[]).await;
    let name = format!("pruned-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&agent.repos_dir(), "fixture-owner", &name);
    let files = fixtures::static_site(&services.base_image, "pruned");
    let sha = repo.commit("site", &files.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>());
    let spec = agent.spec(&repo, &sha, 1);
    succeeded(Step::Checkout, &agent.run(Step::Checkout, &spec).await.outcome);
    let built = succeeded(Step::Build, &agent.run(Step::Build, &spec).await.outcome);
    let image = built.image.expect("the build names its image");

    let engine = Engine::machine();
    engine.docker(&["image", "rm", &image]).unwrap();
    let tags = || {
        let repository = format!("demofleet/{}", spec.name);
        engine.docker(&["image", "ls", "--format", "{{.Repository}}:{{.Tag}}", &repository]).unwrap()
    };
    assert_eq!(tags().trim(), "", "the image is gone before the launch");

    let launched = succeeded(Step::Launch, &agent.run(Step::Launch, &spec).await.outcome);
    assert!(launched.container_id.is_some() && launched.host_port.is_some(), "{launched:?}");
    let again = tags();
    let generation = format!("demofleet/{}:g{}-", spec.name, spec.generation);
    assert!(again.lines().any(|t| t.starts_with(&generation)), "an image of the generation again: {again:?}");
    succeeded(Step::Health, &agent.run(Step::Health, &spec).await.outcome);

    succeeded(Step::Stop, &agent.run(Step::Stop, &spec).await.outcome);
    assert_eq!(tags().trim(), "", "the teardown removed the image built again");
    agent.stop().await;
}
