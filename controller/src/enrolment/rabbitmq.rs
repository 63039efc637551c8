//! Broker users of hosts, through RabbitMQ's management API: one user per host, allowed to
//! read only its own queue and to write only to the exchange results go through and the
//! controller's queue.

use anyhow::{bail, Context};

use demofleet_common::topology;

/// RabbitMQ's management API, as an administrator.
pub struct Management {
    base: String,
    user: String,
    password: String,
    http: reqwest::Client,
}

impl Management {
    /// From `http://user:password@host:port` (the credentials in the URL).
    pub fn new(url: &str) -> anyhow::Result<Management> {
        let mut parsed = url::Url::parse(url).context("DEMOFLEET_AMQP_MANAGEMENT_URL is not a URL")?;
        let user = decode(parsed.username());
        let password = decode(parsed.password().unwrap_or(""));
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        let base = parsed.as_str().trim_end_matches('/').to_string();
        let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build()?;
        Ok(Management { base, user, password, http })
    }

    /// Make (or reset) `user` with `password`, allowed on `vhost` only what host `host_id`'s
    /// agent needs.
    pub async fn put_agent_user(&self, vhost: &str, user: &str, password: &str, host_id: &str) -> anyhow::Result<()> {
        let body = serde_json::json!({ "password": password, "tags": "" });
        self.send(reqwest::Method::PUT, &format!("/api/users/{}", encode(user)), Some(body)).await?;
        let permissions = agent_permissions(host_id);
        let path = format!("/api/permissions/{}/{}", encode(vhost), encode(user));
        self.send(reqwest::Method::PUT, &path, Some(permissions)).await?;
        Ok(())
    }

    /// Delete `user`: RabbitMQ closes its connections. A user already gone is no error.
    pub async fn delete_user(&self, user: &str) -> anyhow::Result<()> {
        self.send(reqwest::Method::DELETE, &format!("/api/users/{}", encode(user)), None).await
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<serde_json::Value>) -> anyhow::Result<()> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .basic_auth(&self.user, Some(&self.password));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| format!("RabbitMQ management API: {method} {path}"))?;
        let status = response.status();
        if status.is_success() || (method == reqwest::Method::DELETE && status == reqwest::StatusCode::NOT_FOUND) {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        bail!("RabbitMQ management API: {method} {path}: {status} {text}")
    }
}

/// The permissions of host `host_id`'s broker user (regular expressions over names):
/// declare and read its own queue, publish to the exchange (results go to the
/// controller's queue through it) and declare the controller's queue as everyone does.
pub fn agent_permissions(host_id: &str) -> serde_json::Value {
    let own = regex_escape(&topology::host_queue(host_id));
    let exchange = regex_escape(topology::EXCHANGE);
    let controller = regex_escape(topology::CONTROLLER_QUEUE);
    serde_json::json!({
        "configure": format!("^({exchange}|{controller}|{own})$"),
        "write": format!("^({exchange}|{controller}|{own})$"),
        "read": format!("^({exchange}|{own})$"),
    })
}

/// The vhost of an AMQP URL (`/` when the path is empty).
pub fn vhost_of(amqp_url: &str) -> anyhow::Result<String> {
    let parsed = url::Url::parse(amqp_url).with_context(|| format!("{amqp_url:?} is not an AMQP URL"))?;
    let path = parsed.path().trim_start_matches('/');
    Ok(if path.is_empty() { "/".to_string() } else { decode(path) })
}

fn regex_escape(text: &str) -> String {
    text.chars().fold(String::new(), |mut out, c| {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

fn encode(part: &str) -> String {
    url::form_urlencoded::byte_serialize(part.as_bytes()).collect::<String>().replace('+', "%20")
}

fn decode(part: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", part.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hosts_user_may_touch_only_its_own_queue() {
        let p = agent_permissions("host-a");
        let read = p["read"].as_str().unwrap();
        assert_eq!(read, r"^(demofleet\.tasks|demofleet\.host\.host-a)$");
        assert!(p["write"].as_str().unwrap().contains(r"demofleet\.controller"));
        assert_eq!(vhost_of("amqp://h:5672/fleet%2Fone").unwrap(), "fleet/one");
        assert_eq!(vhost_of("amqp://h:5672").unwrap(), "/");
        assert_eq!(encode("/"), "%2F");
    }
}
