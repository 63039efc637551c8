//! External commands with a deadline, and processes killed with what they started. A command that hangs (a Docker daemon that stopped
//! answering, an apt lock held, a broker that never boots) fails its test within the
//! deadline, saying what it printed so far, instead of holding the run until CI gives up.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// For quick commands (`docker ps`, `ip link`, `git commit`): generous on a loaded machine.
pub const QUICK: Duration = Duration::from_secs(60);

/// For `docker` commands that may load, build or remove images.
pub const DOCKER: Duration = Duration::from_secs(300);

/// For commands that may take minutes on a new machine: building the project's images from
/// packages, applying a playbook.
pub const SLOW: Duration = Duration::from_secs(15 * 60);

/// Run `command` to its end with its standard input closed, or kill it and everything it
/// started (its process group) once `deadline` has passed: its output, or an error that
/// says which command ran out of time and what it had printed.
pub fn output(command: &mut Command, deadline: Duration) -> std::io::Result<Output> {
    output_with_input(command, &[], deadline)
}

/// [`output`], with `input` written to the command's standard input.
pub fn output_with_input(command: &mut Command, input: &[u8], deadline: Duration) -> std::io::Result<Output> {
    let started = Instant::now();
    let mut child = command
        .stdin(if input.is_empty() { Stdio::null() } else { Stdio::piped() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        let input = input.to_vec();
        std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
    }
    let stdout = collect(child.stdout.take().expect("a piped stdout"));
    let stderr = collect(child.stderr.take().expect("a piped stderr"));
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() >= deadline {
            kill_group(child.id());
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let grace = Duration::from_secs(if status.is_some() { 10 } else { 1 });
    let (stdout, stderr) = (stdout.take(grace), stderr.take(grace));
    match status {
        Some(status) => Ok(Output { status, stdout, stderr }),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "{command:?} did not finish within {deadline:?} and was killed; it printed:\n{}\n{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            ),
        )),
    }
}

/// Run `command` (see [`output`]), which must succeed within `deadline`; its standard
/// output. A failure or a timeout panics naming `what`, with everything it printed.
pub fn run(what: &str, command: &mut Command, deadline: Duration) -> String {
    let out = output(command, deadline).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run `program` with `args` (see [`run`]) within [`QUICK`].
pub fn quick(program: &str, args: &[&str]) -> String {
    run(&format!("{program} {args:?}"), Command::new(program).args(args), QUICK)
}

/// The exit status of `command` (see [`output`]), its output dropped; a timeout is an error.
pub fn status(command: &mut Command, deadline: Duration) -> std::io::Result<ExitStatus> {
    output(command, deadline).map(|out| out.status)
}

/// A process started in a process group of its own, so that what it starts dies with it;
/// killed with SIGKILL when dropped.
pub struct Group(Mutex<Option<Child>>);

impl Group {
    /// No process yet.
    pub fn none() -> Group {
        Group(Mutex::new(None))
    }

    pub fn spawn(command: &mut Command) -> Group {
        let child = command.process_group(0).spawn().unwrap_or_else(|e| panic!("{command:?}: {e}"));
        Group(Mutex::new(Some(child)))
    }

    /// SIGKILL the process and everything of its group, as a crash does.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.get_mut().unwrap().take() {
            kill_group(child.id());
            let _ = child.wait();
        }
    }

    pub fn running(&self) -> bool {
        self.0.lock().unwrap().is_some()
    }

    /// Its exit status, if it has ended by itself.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.0.lock().unwrap().as_mut()?.try_wait().ok()?
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// SIGKILL every process of group `group`.
pub fn kill_group(group: u32) {
    // `kill` itself does not block; its own failure (the group is gone) is no matter.
    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{group}")]).output();
}

/// The bytes read so far from a stream that a thread reads to its end.
struct Collected {
    bytes: Arc<Mutex<Vec<u8>>>,
    ended: std::sync::mpsc::Receiver<()>,
}

impl Collected {
    /// Everything, once the stream ended or `grace` passed: a daemon the command left behind
    /// may hold the stream open for good.
    fn take(&self, grace: Duration) -> Vec<u8> {
        let _ = self.ended.recv_timeout(grace);
        std::mem::take(&mut *self.bytes.lock().unwrap())
    }
}

fn collect(mut stream: impl Read + Send + 'static) -> Collected {
    let bytes = Arc::new(Mutex::new(Vec::new()));
    let (end, ended) = std::sync::mpsc::channel();
    let filling = bytes.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = stream.read(&mut chunk) {
            if n == 0 {
                break;
            }
            filling.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
        let _ = end.send(());
    });
    Collected { bytes, ended }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_past_its_deadline_is_killed_with_what_it_printed() {
        let started = Instant::now();
        let err = output(Command::new("sh").args(["-c", "echo begun; sleep 30"]), Duration::from_millis(500))
            .expect_err("sleep 30 outlasts half a second");
        assert!(started.elapsed() < Duration::from_secs(5), "killed at its deadline, not at its end");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("begun"), "{err}");
    }

    #[test]
    fn a_command_that_finishes_gives_its_output_and_status() {
        let out = output_with_input(Command::new("sh").args(["-c", "cat; exit 3"]), b"fed", QUICK).unwrap();
        assert_eq!((out.status.code(), out.stdout.as_slice()), (Some(3), b"fed".as_slice()));
    }
}
