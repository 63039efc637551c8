//! One real agent on a vhost of the test's own, with the test in the controller's place: it
//! publishes step messages to the agent's queue as anyone who can write to the broker
//! could, and reads the results the agent sends back.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use tempfile::TempDir;
use uuid::Uuid;

use demofleet_agent::Agent;
use demofleet_common::topology;
use demofleet_common::wire::{DemoSpec, Step, StepMessage, StepResult, KIND_STEP, WIRE_VERSION};

use crate::fixtures::FixtureRepo;
use crate::services::{nats_prefix, Services, TestVhost};
use crate::stack::{agent_argv, remove_host_leftovers};

pub struct LoneAgent {
    pub host_id: String,
    pub demo_dir: PathBuf,
    /// Holds the fixture repositories (`repos/`, the agent's `--git-local-root`) and demo folders.
    pub scratch: TempDir,
    agent: Option<Agent>,
    vhost: TestVhost,
    connection: Connection,
    channel: Channel,
    results: Consumer,
}

impl LoneAgent {
    /// Start an agent with the test harness's flags and `extra` ones.
    pub async fn start(extra: &[&str]) -> LoneAgent {
        crate::init_tracing();
        let services = Services::from_env();
        let vhost = TestVhost::create(&services).await;
        let scratch = tempfile::Builder::new().prefix("demofleet-lone-").tempdir().unwrap();
        std::fs::create_dir_all(scratch.path().join("repos")).unwrap();
        let host_id = format!("host-{}", &Uuid::new_v4().simple().to_string()[..10]);
        let demo_dir = scratch.path().join("demos");
        let mut args = agent_argv(
            &host_id,
            &vhost.amqp_url,
            &services.nats_url,
            &nats_prefix(),
            &demo_dir,
            &scratch.path().join("repos"),
            None,
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        let config = demofleet_agent::config::Config::try_parse_from(args).expect("agent flags");
        let agent = Agent::start(config).await.expect("agent starts");
        let connection = Connection::connect(&vhost.amqp_url, ConnectionProperties::default()).await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        topology::declare_queue(&channel, &topology::host_queue(&host_id)).await.unwrap();
        topology::declare_queue(&channel, topology::CONTROLLER_QUEUE).await.unwrap();
        let results = channel
            .basic_consume(
                topology::CONTROLLER_QUEUE.into(),
                "test".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        LoneAgent { host_id, demo_dir, scratch, agent: Some(agent), vhost, connection, channel, results }
    }

    pub fn repos_dir(&self) -> PathBuf {
        self.scratch.path().join("repos")
    }

    /// What the controller would send for pull request `pr` of `repo` at `sha`.
    pub fn spec(&self, repo: &FixtureRepo, sha: &str, pr: u64) -> DemoSpec {
        let name = demofleet_common::names::demo_name(&repo.repo, &repo.owner, pr).unwrap();
        DemoSpec {
            id: Uuid::new_v4(),
            hostname: format!("{name}.localhost"),
            url: format!("http://{name}.localhost:8080"),
            name,
            owner: repo.owner.clone(),
            repo: repo.repo.clone(),
            pr,
            sha: sha.to_string(),
            clone_url: format!("file://{}", repo.bare.display()),
            github_user: "fixture-author".into(),
            generation: 1,
            legacy_run: false,
            closed_outbound: false,
            env: None,
        }
    }

    /// The broker user the agent takes as the controller's (the vhost's, which it shares).
    pub fn controller_user(&self) -> String {
        self.vhost.user().to_string()
    }

    /// Publish `step` for `spec` to the agent's queue, as the controller does (with the
    /// broker user it shares with the agent here), and wait for its result.
    pub async fn run(&mut self, step: Step, spec: &DemoSpec) -> StepResult {
        let user = self.vhost.user().to_string();
        let message = self.publish(&self.channel, step, spec, Some(&user)).await.expect("published");
        self.result_of(&message, Duration::from_secs(120))
            .await
            .unwrap_or_else(|| panic!("no result for {} of {} within 120 s", step.as_str(), spec.name))
    }

    /// Publish `step` for `spec` to the agent's queue as another host of the fleet could: a
    /// broker user of its own, allowed the tasks exchange, naming itself (`user_id`) or
    /// claiming to be `claim`. The agent's result within `wait`, if any; an error when the
    /// broker refuses the message.
    pub async fn run_as_another_host(
        &mut self,
        step: Step,
        spec: &DemoSpec,
        claim: Option<&str>,
        wait: Duration,
    ) -> Result<Option<StepResult>, lapin::Error> {
        let (user, password) = self.vhost.create_agent_user("intruder").await;
        let mut url = reqwest::Url::parse(&self.vhost.amqp_url).expect("the vhost's URL");
        url.set_username(&user).unwrap();
        url.set_password(Some(&password)).unwrap();
        let connection = Connection::connect(url.as_str(), ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel.confirm_select(lapin::options::ConfirmSelectOptions::default()).await?;
        let published = self.publish(&channel, step, spec, Some(claim.unwrap_or(&user))).await;
        let _ = connection.close(200, "done".into()).await;
        let message = published?;
        Ok(self.result_of(&message, wait).await)
    }

    async fn publish(
        &self,
        channel: &Channel,
        step: Step,
        spec: &DemoSpec,
        user: Option<&str>,
    ) -> Result<StepMessage, lapin::Error> {
        let message = StepMessage {
            version: WIRE_VERSION,
            chain_id: Uuid::new_v4(),
            step,
            attempt: 1,
            host_id: self.host_id.clone(),
            demo: spec.clone(),
        };
        let mut properties = BasicProperties::default().with_delivery_mode(2).with_type(KIND_STEP.into());
        if let Some(user) = user {
            properties = properties.with_user_id(user.into());
        }
        let confirm = channel
            .basic_publish(
                topology::EXCHANGE.into(),
                topology::host_queue(&self.host_id).as_str().into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(&message).unwrap(),
                properties,
            )
            .await?;
        // On a channel in confirm mode, wait for the broker's word (a refused user_id closes it).
        confirm.await?;
        Ok(message)
    }

    /// The result of `message`, if it comes within `wait` (other results are dropped).
    async fn result_of(&mut self, message: &StepMessage, wait: Duration) -> Option<StepResult> {
        let waiting = async {
            while let Some(delivery) = self.results.next().await {
                let delivery = delivery.unwrap();
                delivery.ack(BasicAckOptions::default()).await.unwrap();
                let result: StepResult = serde_json::from_slice(&delivery.data).unwrap();
                if result.chain_id == message.chain_id {
                    return result;
                }
            }
            panic!("the result consumer ended");
        };
        tokio::time::timeout(wait, waiting).await.ok()
    }

    pub async fn stop(mut self) {
        if let Some(agent) = self.agent.take() {
            agent.shutdown().await;
        }
        let _ = self.connection.close(200, "test done".into()).await;
        remove_host_leftovers(&self.host_id);
        self.vhost.delete().await;
    }
}
