//! How demos are addressed: hostnames `<name>.<base domain>`, the URLs people open, and
//! which demo a request's `Host` header asks for.

/// Demo hostnames `<name>.<base domain>` and the URLs people use to reach them.
#[derive(Debug, Clone)]
pub struct DemoUrls {
    pub base_domain: String,
    pub scheme: String,
    /// Shown in URLs when it is not the scheme's default.
    pub port: Option<u16>,
}

impl DemoUrls {
    pub fn hostname(&self, name: &str) -> String {
        format!("{name}.{}", self.base_domain)
    }

    pub fn url(&self, hostname: &str) -> String {
        let default_port = if self.scheme == "https" { 443 } else { 80 };
        match self.port {
            Some(port) if port != default_port => format!("{}://{hostname}:{port}", self.scheme),
            _ => format!("{}://{hostname}", self.scheme),
        }
    }

    /// The demo name a request's `Host` header asks for, if it is under the base domain
    /// or `localhost`.
    pub fn name_from_host<'h>(&self, host: &'h str) -> Option<&'h str> {
        let host =
            host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h);
        let host = host.strip_suffix('.').unwrap_or(host);
        [self.base_domain.as_str(), "localhost"]
            .iter()
            .find_map(|domain| host.strip_suffix(domain)?.strip_suffix('.'))
            .filter(|name| !name.is_empty() && !name.contains('.'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_hosts() {
        let urls = DemoUrls { base_domain: "demos.example.com".into(), scheme: "https".into(), port: Some(443) };
        assert_eq!(urls.url(&urls.hostname("a-b-pr-1")), "https://a-b-pr-1.demos.example.com");
        assert_eq!(urls.name_from_host("a-b-pr-1.demos.example.com"), Some("a-b-pr-1"));
        assert_eq!(urls.name_from_host("a-b-pr-1.localhost:8080"), Some("a-b-pr-1"));
        assert_eq!(urls.name_from_host("x.y.localhost"), None);
        assert_eq!(urls.name_from_host("localhost"), None);
        assert_eq!(urls.name_from_host("a-b-pr-1.example.org"), None);
        let local = DemoUrls { base_domain: "localhost".into(), scheme: "http".into(), port: Some(8080) };
        assert_eq!(local.url("n.localhost"), "http://n.localhost:8080");
    }
}
