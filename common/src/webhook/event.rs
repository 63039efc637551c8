//! The parts of GitHub's webhook payloads that demofleet reads, and what each event asks for.

use serde::Deserialize;

/// The fields of a `pull_request` event that decide a demo.
#[derive(Debug, Deserialize)]
pub struct PullRequestEvent {
    pub action: String,
    pub number: u64,
    pub pull_request: PullRequest,
    /// The base repository: the one the PR is opened against, and the demo belongs to.
    pub repository: Repository,
    /// Who caused the event.
    #[serde(default)]
    pub sender: Option<User>,
}

/// The fields of an `issue_comment` event that can approve a demo.
#[derive(Debug, Deserialize)]
pub struct IssueCommentEvent {
    pub action: String,
    pub issue: Issue,
    pub comment: Comment,
    pub repository: Repository,
}

#[derive(Debug, Deserialize)]
pub struct Issue {
    pub number: u64,
    /// Present when the issue is a pull request.
    #[serde(default)]
    pub pull_request: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct Comment {
    /// GitHub's id of the comment: one comment approves once, however often it is delivered.
    pub id: u64,
    pub body: String,
    pub user: User,
}

impl IssueCommentEvent {
    /// A new comment on a pull request whose first line starts with `/demo approve`.
    pub fn is_approval(&self) -> bool {
        let mut words = self.comment.body.lines().next().unwrap_or_default().split_whitespace();
        self.action == "created"
            && self.issue.pull_request.is_some()
            && words.next() == Some("/demo")
            && words.next() == Some("approve")
    }

    /// The commit an approval names: `/demo approve <sha>`, the full head commit id, so
    /// that an approval never carries over to a commit pushed after it was written.
    pub fn approved_sha(&self) -> Result<String, String> {
        let first = self.comment.body.lines().next().unwrap_or_default();
        match first.split_whitespace().collect::<Vec<_>>()[..] {
            ["/demo", "approve", sha] if is_commit_sha(sha) => Ok(sha.to_ascii_lowercase()),
            _ => Err("an approval names the head commit it approves, in full: `/demo approve <sha>`".into()),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct PullRequest {
    pub user: User,
    #[serde(default)]
    pub title: Option<String>,
    /// When the PR last changed; orders events that arrive out of order.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub updated_at: Option<time::OffsetDateTime>,
    pub head: Head,
    #[serde(default)]
    pub merged: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct Head {
    pub sha: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The fork for fork PRs; null when the fork was deleted.
    pub repo: Option<Repository>,
}

#[derive(Debug, Deserialize)]
pub struct Repository {
    pub name: String,
    pub owner: User,
}

#[derive(Debug, Deserialize)]
pub struct User {
    pub login: String,
}

/// What a `pull_request` action asks of its demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Build and run the head commit (new or updated).
    Deploy,
    /// Tear the demo down.
    Teardown,
    /// The PR became a draft: the repository's draft policy decides.
    Draft,
    /// Nothing for demofleet to do.
    Ignore,
}

impl PullRequestEvent {
    pub fn intent(&self) -> Intent {
        match self.action.as_str() {
            "opened" | "reopened" | "synchronize" | "ready_for_review" => Intent::Deploy,
            "closed" => Intent::Teardown,
            "converted_to_draft" => Intent::Draft,
            _ => Intent::Ignore,
        }
    }
}

/// Why a payload cannot be read: a field (`path`) of the wrong type or missing, or, with
/// no path, a body that is not a JSON object at all.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe())]
pub struct PayloadError {
    pub path: String,
    pub message: String,
}

impl PayloadError {
    fn describe(&self) -> String {
        if self.path.is_empty() {
            format!("the body is not a JSON object: {}", self.message)
        } else {
            format!("payload field `{}`: {}", self.path, self.message)
        }
    }
}

/// Parse `body` as `T`, naming the offending field on failure.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, PayloadError> {
    // The fast path; only a failure pays for tracking the path.
    if let Ok(value) = serde_json::from_slice(body) {
        return Ok(value);
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Err(err) => return Err(PayloadError { path: String::new(), message: err.to_string() }),
        Ok(serde_json::Value::Object(_)) => {}
        Ok(other) => {
            let kind = match other {
                serde_json::Value::Array(_) => "an array",
                serde_json::Value::String(_) => "a string",
                serde_json::Value::Number(_) => "a number",
                serde_json::Value::Bool(_) => "a boolean",
                _ => "null",
            };
            return Err(PayloadError { path: String::new(), message: format!("it is {kind}") });
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        // serde_json appends " at line L column C"; the path already says where.
        let message = message.split(" at line ").next().unwrap_or(&message).to_string();
        PayloadError { path, message }
    })
}

/// A SHA-1 or SHA-256 commit id, in hex.
pub fn is_commit_sha(sha: &str) -> bool {
    matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_that_is_not_a_json_object_says_so() {
        let broken = parse::<PullRequestEvent>(br#"{"action": "opened", "number": "#).unwrap_err();
        assert!(broken.to_string().starts_with("the body is not a JSON object: EOF while parsing"), "{broken}");
        let array = parse::<PullRequestEvent>(b"[1, 2]").unwrap_err();
        assert_eq!(array.to_string(), "the body is not a JSON object: it is an array");
        let field = parse::<PullRequestEvent>(br#"{"action": 1}"#).unwrap_err();
        assert!(field.to_string().starts_with("payload field `action`"), "{field}");
    }

    fn testdata(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/../tests/data/github/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn real_payloads_parse_to_the_right_intent() {
        for (file, intent) in [
            ("pull_request.opened.json", Intent::Deploy),
            ("pull_request.reopened.json", Intent::Deploy),
            ("pull_request.synchronize.json", Intent::Deploy),
            ("pull_request.closed.json", Intent::Teardown),
        ] {
            let event: PullRequestEvent = parse(&testdata(file)).unwrap();
            assert_eq!(event.intent(), intent, "{file}");
            assert_eq!(event.repository.owner.login, "Codertocat");
            assert!(is_commit_sha(&event.pull_request.head.sha));
        }
    }

    #[test]
    fn errors_name_the_field() {
        let err = parse::<PullRequestEvent>(br#"{"action":"opened","number":"two"}"#).unwrap_err();
        assert_eq!(err.path, "number");
        let err =
            parse::<PullRequestEvent>(br#"{"action":"opened","number":2,"repository":{"name":"r"}}"#).unwrap_err();
        assert_eq!(err.path, "repository");
        assert!(err.message.contains("owner"), "{}", err.message);
    }

    #[test]
    fn an_approval_names_the_full_head_commit() {
        let sha = "a".repeat(40);
        let comment = |body: &str| IssueCommentEvent {
            action: "created".into(),
            issue: Issue { number: 2, pull_request: Some(serde_json::json!({})) },
            comment: Comment { id: 7, body: body.into(), user: User { login: "m".into() } },
            repository: Repository { name: "r".into(), owner: User { login: "o".into() } },
        };
        let named = comment(&format!("/demo approve {}\nthanks", sha.to_uppercase()));
        assert!(named.is_approval());
        assert_eq!(named.approved_sha(), Ok(sha.clone()));
        for body in ["/demo approve", "/demo approve aaaaaaa", "/demo approve HEAD", &format!("/demo approve {sha} x")]
        {
            let asked = comment(body);
            assert!(asked.is_approval() && asked.approved_sha().is_err(), "{body}");
        }
        assert!(!comment("looks good\n/demo approve").is_approval());
    }
}
