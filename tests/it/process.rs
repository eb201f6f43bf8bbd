//! The real `nereid` binary as a child process, for what only a process shows: signals and the
//! exit status. Its stdout and stderr are read line by line on threads of their own; the child is
//! killed when the handle drops, passed or not.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use tokio::time::Instant;

pub struct ServerProcess {
    child: Child,
    lines: Receiver<String>,
    /// Every line read so far.
    pub log: Vec<String>,
}

impl ServerProcess {
    /// Starts the binary with `args`.
    pub fn start(args: &[&str]) -> ServerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nereid"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the nereid binary starts");
        let (tx, lines) = channel();
        let pipes: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for pipe in pipes {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        ServerProcess {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Starts the binary on `repo` with gRPC and metrics on ephemeral loopback ports, no HTTP,
    /// and `extra` flags after those.
    pub fn grpc_and_metrics(repo: &std::path::Path, extra: &[&str]) -> ServerProcess {
        let repo = repo.to_str().expect("a UTF-8 temporary path");
        let mut args = vec![
            "--model-repository",
            repo,
            "--grpc-address",
            "127.0.0.1",
            "--grpc-port",
            "0",
            "--allow-http",
            "false",
            "--metrics-address",
            "127.0.0.1",
            "--metrics-port",
            "0",
        ];
        args.extend_from_slice(extra);
        ServerProcess::start(&args)
    }

    /// The child's process id (its /proc entries).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The whole log so far, for failure messages.
    pub fn log_text(&self) -> String {
        self.log.join("\n")
    }

    /// The first line (already read or arriving within `bound`) that `find` maps to a value.
    pub fn wait_for_line<T>(&mut self, bound: Duration, find: impl Fn(&str) -> Option<T>) -> T {
        if let Some(v) = self.log.iter().find_map(|l| find(l)) {
            return v;
        }
        let deadline = Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                panic!("no such line within {bound:?}; log:\n{}", self.log_text());
            };
            let found = find(&line);
            self.log.push(line);
            if let Some(v) = found {
                return v;
            }
        }
    }

    /// The address logged as "`what` at HOST:PORT".
    pub fn logged_addr(&mut self, bound: Duration, what: &str) -> String {
        let marker = format!("{what} at ");
        self.wait_for_line(bound, |l| {
            l.split_once(&marker)
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .map(str::to_string)
        })
    }

    /// Sends SIGTERM and waits for the exit, failing the test if it takes longer than `bound`;
    /// the log is complete once this returns.
    pub async fn sigterm_and_wait(&mut self, bound: Duration) -> ExitStatus {
        self.sigterm();
        self.wait_exit(bound).await
    }

    /// Sends SIGTERM (the server starts its graceful stop).
    pub fn sigterm(&self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Waits for the exit, failing the test if it takes longer than `bound` (a bound on a hang);
    /// the log is complete once this returns.
    pub async fn wait_exit(&mut self, bound: Duration) -> ExitStatus {
        let deadline = Instant::now() + bound;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            self.log.extend(self.lines.try_iter());
            assert!(
                Instant::now() < deadline,
                "nereid outlived SIGTERM by {bound:?}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The pipes close with the process: what is left arrives at once.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.log.push(line);
        }
        status
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
