//! SIGTERM while an inference runs past `--exit-timeout-secs` (a `Loop` that never ends by
//! itself): the real binary exits 0 within the exit timeout plus teardown, without waiting for
//! the instance thread that is still running it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::load_cancel::{KillOnDrop, spin_repo};

/// (exit timeout 1 s + 2 s) × 10, and a bound on the startup steps.
const BOUND: Duration = Duration::from_secs(30);

/// The address logged as "`what` at HOST:PORT": from the lines read so far, else from the next.
fn logged_addr(
    lines: &std::sync::mpsc::Receiver<String>,
    log: &mut Vec<String>,
    what: &str,
) -> String {
    let marker = format!("{what} at ");
    let find = |l: &str| {
        l.split_once(&marker)
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .map(str::to_string)
    };
    if let Some(addr) = log.iter().find_map(|l| find(l)) {
        return addr;
    }
    loop {
        let line = lines
            .recv_timeout(BOUND)
            .unwrap_or_else(|_| panic!("the server logs '{what}'; log:\n{}", log.join("\n")));
        let addr = find(&line);
        log.push(line);
        if let Some(addr) = addr {
            return addr;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_an_inference_that_never_ends_exits_0() {
    let repo = spin_repo(false);
    let child = Command::new(env!("CARGO_BIN_EXE_nereid"))
        .args(["--model-repository", repo.path().to_str().unwrap()])
        .args([
            "--grpc-address",
            "127.0.0.1",
            "--grpc-port",
            "0",
            "--allow-http",
            "false",
        ])
        .args(["--metrics-address", "127.0.0.1", "--metrics-port", "0"])
        .args(["--exit-timeout-secs", "1", "--shutdown-delay-secs", "0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the nereid binary starts");
    let mut child = KillOnDrop(child);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for pipe in [
        Box::new(child.0.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.0.stdout.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    let mut log = Vec::new();
    let grpc = logged_addr(&rx, &mut log, "Started GRPCInferenceService");
    let metrics = logged_addr(&rx, &mut log, "Started Metrics Service");

    // One inference of `spin`: it never finishes by itself.
    let mut client = Client::connect(format!("http://{grpc}")).await.unwrap();
    let request = raw_request("spin", vec![(input("x", "FP32", &[1]), f32_bytes(&[1.0]))]);
    let _call = tokio::spawn(async move { client.model_infer(request).await });

    // Observable state, not a sleep: the instance is executing it.
    let http = reqwest::Client::new();
    let start = Instant::now();
    loop {
        let text = http
            .get(format!("http://{metrics}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let busy = text.lines().any(|l| {
            l.starts_with("nereid_model_instances_busy{")
                && l.contains("model=\"spin\"")
                && l.ends_with(" 1")
        });
        if busy {
            break;
        }
        assert!(start.elapsed() < BOUND, "spin never became busy:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert!(
        Command::new("kill")
            .args(["-TERM", &child.0.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + BOUND;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        log.extend(rx.try_iter());
        assert!(
            Instant::now() < deadline,
            "nereid outlived SIGTERM by {BOUND:?} with an inference stuck in ONNX Runtime; log:\n{}",
            log.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    log.extend(rx.try_iter());
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        log.join("\n")
    );
    assert!(
        log.iter()
            .any(|l| l.contains("exit timeout reached with requests still in flight")),
        "the server says it left a request behind; log:\n{}",
        log.join("\n")
    );
}
