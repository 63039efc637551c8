//! A time limit for each test: a test still running past it (a wait or a command without a
//! deadline of its own, a deadlock) ends its test binary with a message naming it, so that a
//! broken environment fails the run in minutes instead of holding it until CI gives up.
//! Every [`Stack`](crate::stack::Stack) holds one; tests without a stack take one with
//! [`start`].

use std::io::Write;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// Seconds a test may run; 20 minutes by default (the slowest tests take about 5).
pub const VAR: &str = "DEMOFLEET_TEST_TIME_LIMIT";
const DEFAULT: Duration = Duration::from_secs(20 * 60);

/// The limit of the running test; it ends when dropped.
pub struct TimeLimit {
    _running: mpsc::Sender<()>,
}

/// Start the limit of the test running on this thread: [`VAR`]'s, else 20 minutes.
pub fn start() -> TimeLimit {
    let limit = match std::env::var(VAR) {
        Ok(text) => Duration::from_secs(text.parse().unwrap_or_else(|_| panic!("{VAR}={text} is not a number"))),
        Err(_) => DEFAULT,
    };
    start_for(limit)
}

/// Start a limit of `limit` for the test running on this thread (libtest names the thread
/// after the test). Past it, the test binary exits with status 124, its other tests with it.
pub fn start_for(limit: Duration) -> TimeLimit {
    let test = std::thread::current().name().unwrap_or("a test").to_string();
    let (running, ended) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name(format!("time limit of {test}"))
        .spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = ended.recv_timeout(limit) {
                // Straight to the standard error: libtest's capture of eprintln! would be lost with
                // the process.
                let _ = writeln!(
                    std::io::stderr(),
                    "\n{test} still running after its time limit of {limit:?} ({VAR}): ending this test binary \
                     with its other tests"
                );
                std::process::exit(124);
            }
        })
        .expect("a thread for the time limit");
    TimeLimit { _running: running }
}
