//! Fixture repositories served over git's smart HTTP protocol, as a private GitHub
//! repository is: `git http-backend` (git's own CGI server) behind a check that answers 401
//! to any request without `Authorization: Basic base64("x-access-token:<token>")`.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use base64::Engine;
use tokio::io::AsyncWriteExt;

struct Inner {
    root: PathBuf,
    token: String,
    /// Every request: its path and whether it carried the token.
    requests: Mutex<Vec<(String, bool)>>,
}

pub struct GitHttp {
    /// `http://127.0.0.1:<port>`; repositories are at `/<owner>/<repo>.git`.
    pub url: String,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GitHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GitHttp {
    /// Serve the bare repositories under `root` to clients that present `token`.
    pub async fn start(root: PathBuf, token: &str) -> GitHttp {
        let inner = Arc::new(Inner { root, token: token.into(), requests: Mutex::default() });
        let app = axum::Router::new().fallback(serve).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        GitHttp { url, inner, task }
    }

    /// `(path, carried the token)` of every request so far.
    pub fn requests(&self) -> Vec<(String, bool)> {
        self.inner.requests.lock().unwrap().clone()
    }
}

async fn serve(State(inner): State<Arc<Inner>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let expected = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{}", inner.token));
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .is_some_and(|v| v == expected);
    inner.requests.lock().unwrap().push((uri.path().to_string(), authorized));
    if !authorized {
        // What GitHub answers for a private repository without credentials.
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("www-authenticate", "Basic realm=\"GitHub\"")
            .body(Body::from("authentication required\n"))
            .unwrap();
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &inner.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("PATH_INFO", uri.path())
        .env("QUERY_STRING", uri.query().unwrap_or_default())
        .env("REQUEST_METHOD", method.as_str())
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("git http-backend starts");
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(&body).await;
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    cgi_response(&output.stdout)
}

/// A CGI answer (headers, a blank line, the body) as an HTTP response.
fn cgi_response(out: &[u8]) -> Response {
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    let split = split.or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((end, gap)) = split else {
        return Response::builder().status(500).body(Body::from(out.to_vec())).unwrap();
    };
    let mut response = Response::builder().status(200);
    for line in String::from_utf8_lossy(&out[..end]).lines() {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split(' ').next().and_then(|c| c.parse::<u16>().ok()).unwrap_or(500);
            response = response.status(code);
        } else {
            response = response.header(name, value);
        }
    }
    response.body(Body::from(out[end + gap..].to_vec())).unwrap()
}
