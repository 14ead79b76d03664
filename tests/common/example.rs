//! Runs an example binary as a child process, as a black box.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const WAIT: Duration = Duration::from_secs(20);

/// `cargo test` builds the examples next to the test binaries' `deps/` folder.
pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test`, which builds the examples",
        path.display()
    );
    path
}

pub struct Example {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    /// Everything the child wrote to stderr, once it closed it.
    stderr: mpsc::Receiver<String>,
}

impl Example {
    pub fn spawn(name: &str, args: &[&str]) -> Example {
        let mut command = Command::new(example_bin(name));
        command.args(args);
        Example::start(command)
    }

    /// Runs `command` with its stdout read line by line and its stderr kept.
    pub fn start(mut command: Command) -> Example {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the example");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (tx, stderr) = mpsc::channel();
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            let _ = tx.send(s);
        });
        Example {
            child,
            lines,
            stderr,
        }
    }

    /// The next line of its stdout.
    pub fn line(&self) -> String {
        match self.lines.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("no line from the example within {WAIT:?}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let stderr = self.stderr.recv_timeout(WAIT).unwrap_or_default();
                panic!("the example closed its stdout (exited?); its stderr:\n{stderr}")
            }
        }
    }

    /// The address from its `listening on ADDR` line.
    pub fn addr(&self) -> String {
        let first = self.line();
        first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_owned()
    }

    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM failed");
    }

    /// Waits for exit (bounded), returning the status and stderr.
    pub fn wait(mut self) -> (std::process::ExitStatus, String) {
        let err = self
            .stderr
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("the example did not exit within {WAIT:?}"));
        let status = self.child.wait().unwrap();
        (status, err)
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        // Killed and reaped (a no-op after `wait`).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the outside program `name` runs (`name arg` exits 0). Under CI (CI=true) a
/// missing program fails the test, since CI installs it; locally the test is skipped with
/// a loud message.
pub fn program_available(name: &str, arg: &str) -> bool {
    let ok = std::process::Command::new(name)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{name} is required when CI=true (.ci/run installs it)"
        );
        eprintln!("SKIPPED: {name} is not installed; install it to run this test");
    }
    ok
}
