//! Open-loop overload generator for `scripts/overload.sh`: measures a model's capacity (closed
//! loop), then offers multiples of it open loop with two priority classes, and reports per step
//! what a client sees. It replaces perf_analyzer for this one job because perf_analyzer stops at
//! the first failed request ("Thread [0] had error: ... Exceeds maximum queue size"), and
//! rejections are what this benchmark measures.
//!
//! cargo run --release --example overload -- <grpc url> <model> <server pid> [options]
//! (`--help` lists the options; `--metrics` reads the bucket bounds of
//! nereid_inference_rejection_duration_seconds).
//!
//! Requests are sent at evenly spaced times (like perf_analyzer's constant distribution) whether or
//! not earlier ones were answered. A generator short of CPU hands them to the client late: `sent/s`
//! is the rate it achieved (requests ÷ the time until the last one left), `lag p99` how late they
//! left; a step whose `sent/s` is below its `offered/s` did not offer what it was asked to. Latency runs from the moment a request is handed to the gRPC
//! client to its answer. An answer is accepted (success), rejected (UNAVAILABLE, split into refused
//! at admission and expired in the queue by its message) or an error: anything else, which counts
//! as a lost request. The server's resident memory is sampled every 20 ms from /proc.

#![allow(
    clippy::disallowed_types,
    reason = "a load generator measures real time and shares results across its own threads"
)]

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use nereid::pb::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use nereid::pb::inference::infer_parameter::ParameterChoice;
use nereid::pb::inference::model_infer_request::InferInputTensor;
use nereid::pb::inference::{InferParameter, ModelInferRequest, ModelMetadataRequest};
use tonic::transport::Channel;

type Client = GrpcInferenceServiceClient<Channel>;

/// Offers a model multiples of its measured capacity, open loop, with two priority classes.
#[derive(Parser, Debug)]
#[command(name = "overload", version)]
struct Options {
    /// The server's gRPC URL, e.g. http://127.0.0.1:8001.
    url: String,
    /// The model to drive (a batch-1 request is built from its metadata).
    model: String,
    /// The server's process id (its resident memory is sampled from /proc).
    pid: u32,
    /// Closed-loop clients for the capacity run.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    capacity_concurrency: u64,
    /// Length of the capacity run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    capacity_seconds: f64,
    /// Offered load per step, as multiples of the capacity.
    #[arg(long, value_delimiter = ',', default_values_t = [1.0, 2.0, 4.0])]
    steps: Vec<f64>,
    /// Length of each step, in seconds.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Share of requests sent at priority 1; the rest go at priority 2.
    #[arg(long, default_value_t = 0.1)]
    high_share: f64,
    /// HTTP/2 connections the requests are spread over.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    connections: u64,
    /// Also write every step's figures as one JSON object per line to this file.
    #[arg(long)]
    json: Option<String>,
    /// The server's /metrics URL: per step, the server-side time to a refusal.
    #[arg(long)]
    metrics: Option<String>,
}

/// A batch-1 request for `model` built from its metadata, once at priority 1 and once at 2
/// (the same tensors; `raw_input_contents` are shared `Bytes`).
async fn requests_for(client: &mut Client, model: &str) -> Result<[ModelInferRequest; 2], String> {
    let meta = client
        .model_metadata(ModelMetadataRequest {
            name: model.into(),
            version: String::new(),
        })
        .await
        .map_err(|s| format!("model metadata: {}", s.message()))?
        .into_inner();
    let mut req = ModelInferRequest {
        model_name: model.into(),
        ..Default::default()
    };
    let mut seed = 0x2545_f491_u32;
    for input in meta.inputs {
        let shape: Vec<i64> = input
            .shape
            .iter()
            .map(|&d| if d < 0 { 1 } else { d })
            .collect();
        let n = shape.iter().product::<i64>().max(0) as usize;
        let mut raw = Vec::new();
        for _ in 0..n {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            match input.datatype.as_str() {
                "FP32" => raw.extend_from_slice(&((seed % 1000) as f32 / 1000.0).to_le_bytes()),
                "INT32" => raw.extend_from_slice(&((seed % 100) as i32).to_le_bytes()),
                "INT64" => raw.extend_from_slice(&((seed % 100) as i64).to_le_bytes()),
                t => {
                    return Err(format!(
                        "input {} has datatype {t}, which this generator does not fill",
                        input.name
                    ));
                }
            }
        }
        req.raw_input_contents.push(raw.into());
        req.inputs.push(InferInputTensor {
            name: input.name,
            datatype: input.datatype,
            shape,
            ..Default::default()
        });
    }
    Ok([1, 2].map(|priority| {
        let mut r = req.clone();
        r.parameters.insert(
            "priority".into(),
            InferParameter {
                parameter_choice: Some(ParameterChoice::Int64Param(priority)),
            },
        );
        r
    }))
}

#[derive(Clone, Copy, PartialEq)]
enum Outcome {
    Accepted,
    /// UNAVAILABLE before the request queued: queue full, shed, deadline, not ready, draining.
    Refused,
    /// UNAVAILABLE "Request timeout expired": queued, then dropped at its deadline.
    Expired,
    Error,
}

/// One answer: its priority class, outcome and latency, and when the generator handed the request
/// to the client, since the step began (its lag behind the schedule is `started − due`).
struct Answer {
    high: bool,
    outcome: Outcome,
    latency: Duration,
    started: Duration,
    lag: Duration,
}

#[derive(Default)]
struct Record {
    answers: Vec<Answer>,
    errors: Vec<String>,
}

/// Sends one request, due `due` after the step's start `t0`. A generator whose core is saturated
/// runs these tasks late: the lag and the achieved rate (`Step::sent_per_s`) say so.
async fn send(
    mut client: Client,
    req: ModelInferRequest,
    high: bool,
    rec: Arc<Mutex<Record>>,
    t0: Instant,
    due: Duration,
) {
    let t = Instant::now();
    let started = t - t0;
    let r = client.model_infer(req).await;
    let took = t.elapsed();
    let outcome = match &r {
        Ok(_) => Outcome::Accepted,
        Err(s) if s.code() == tonic::Code::Unavailable => {
            if s.message().contains("Request timeout expired") {
                Outcome::Expired
            } else {
                Outcome::Refused
            }
        }
        Err(_) => Outcome::Error,
    };
    let mut rec = rec.lock().unwrap();
    rec.answers.push(Answer {
        high,
        outcome,
        latency: took,
        started,
        lag: started.saturating_sub(due),
    });
    if let Err(s) = r
        && outcome == Outcome::Error
        && rec.errors.len() < 5
    {
        rec.errors.push(format!("{:?}: {}", s.code(), s.message()));
    }
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Closed loop: `concurrency` clients, each sending its next request when the last is answered.
async fn capacity(
    clients: &[Client],
    reqs: &[ModelInferRequest; 2],
    o: &Options,
) -> Result<f64, String> {
    let stop = Instant::now() + Duration::from_secs_f64(o.capacity_seconds);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..o.capacity_concurrency as usize {
        let mut client = clients[i % clients.len()].clone();
        // Priority 1: no queue timeout, so the closed loop measures the drain rate only.
        let req = reqs[0].clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < stop {
                client
                    .model_infer(req.clone())
                    .await
                    .map_err(|s| format!("capacity run: {:?}: {}", s.code(), s.message()))?;
                done += 1;
            }
            Ok::<u64, String>(done)
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await.map_err(|e| e.to_string())??;
    }
    Ok(done as f64 / t0.elapsed().as_secs_f64())
}

struct Step {
    mult: f64,
    offered: f64,
    /// The rate actually achieved: requests ÷ the time until the last was handed to the client
    /// (at most the step's length). Below `offered` when the generator could not keep up.
    sent_per_s: f64,
    /// How late the generator handed requests to the client, p99 (ms).
    lag_p99: f64,
    accepted_per_s: f64,
    p50: f64,
    p99: f64,
    high_p99: f64,
    low_p99: f64,
    refused: usize,
    expired: usize,
    reject_p99: f64,
    refused_p50: f64,
    refused_p99: f64,
    errors: Vec<String>,
    error_count: usize,
    peak_mb: f64,
    /// Server-side time to a refusal, p50 and p99 (upper bucket bounds; NaN without --metrics).
    server_refused_p50: f64,
    server_refused_p99: f64,
    /// How late a 1 ms sleep wakes on this machine during the step (p99): the scheduling delay
    /// every hop of a request (client, server, client) can meet.
    wake_p99: f64,
}

fn pct_ms(mut xs: Vec<Duration>, q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort();
    let i = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len()) - 1;
    xs[i].as_secs_f64() * 1e3
}

async fn step(
    clients: &[Client],
    reqs: &[ModelInferRequest; 2],
    o: &Options,
    mult: f64,
    rate: f64,
) -> Step {
    let rec = Arc::new(Mutex::new(Record::default()));
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(rss_kb(o.pid)));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let buckets_before = match &o.metrics {
        Some(url) => refusal_buckets(url, &o.model).await,
        None => Vec::new(),
    };
    let prober = {
        let sampling = sampling.clone();
        std::thread::spawn(move || wakeups(&sampling))
    };
    let sampler = {
        let (peak, sampling, pid) = (peak.clone(), sampling.clone(), o.pid);
        tokio::spawn(async move {
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_kb(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let interval = 1.0 / rate;
    let total = (rate * o.seconds).round() as u64;
    // Which requests are high priority: every k-th, spread evenly.
    let every = if o.high_share > 0.0 {
        (1.0 / o.high_share).round() as u64
    } else {
        u64::MAX
    };
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    let mut sent = 0u64;
    while sent < total {
        let due = ((t0.elapsed().as_secs_f64() / interval) as u64 + 1).min(total);
        while sent < due {
            let high = sent.is_multiple_of(every);
            let client = clients[(sent as usize) % clients.len()].clone();
            let req = reqs[usize::from(!high)].clone();
            let due = Duration::from_secs_f64(sent as f64 * interval);
            tasks.push(tokio::spawn(send(client, req, high, rec.clone(), t0, due)));
            sent += 1;
        }
        if sent < total {
            let next = t0 + Duration::from_secs_f64(sent as f64 * interval);
            tokio::time::sleep_until(next.into()).await;
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.await;
    let wake = prober.join().unwrap_or_default();
    let server_refused = match &o.metrics {
        Some(url) => {
            let after = refusal_buckets(url, &o.model).await;
            bucket_delta(&buckets_before, &after)
        }
        None => Vec::new(),
    };
    let rec = std::mem::take(&mut *rec.lock().unwrap());
    let pick = |f: &dyn Fn(bool, Outcome) -> bool| -> Vec<Duration> {
        rec.answers
            .iter()
            .filter(|a| f(a.high, a.outcome))
            .map(|a| a.latency)
            .collect()
    };
    // The schedule hands the last request over at (total − 1) × interval; one interval more is
    // the step's length. A generator that fell behind took longer.
    let last_start = rec
        .answers
        .iter()
        .map(|a| a.started.as_secs_f64())
        .fold(0.0, f64::max);
    let send_time = (last_start + interval).max(o.seconds);
    let accepted = pick(&|_, oc| oc == Outcome::Accepted);
    let rejected = pick(&|_, oc| matches!(oc, Outcome::Refused | Outcome::Expired));
    Step {
        mult,
        offered: rate,
        sent_per_s: rec.answers.len() as f64 / send_time,
        lag_p99: pct_ms(rec.answers.iter().map(|a| a.lag).collect(), 0.99),
        accepted_per_s: accepted.len() as f64 / elapsed,
        p50: pct_ms(accepted.clone(), 0.50),
        p99: pct_ms(accepted, 0.99),
        high_p99: pct_ms(pick(&|h, oc| h && oc == Outcome::Accepted), 0.99),
        low_p99: pct_ms(pick(&|h, oc| !h && oc == Outcome::Accepted), 0.99),
        refused: rec
            .answers
            .iter()
            .filter(|a| a.outcome == Outcome::Refused)
            .count(),
        expired: rec
            .answers
            .iter()
            .filter(|a| a.outcome == Outcome::Expired)
            .count(),
        reject_p99: pct_ms(rejected, 0.99),
        refused_p50: pct_ms(pick(&|_, oc| oc == Outcome::Refused), 0.50),
        refused_p99: pct_ms(pick(&|_, oc| oc == Outcome::Refused), 0.99),
        error_count: rec
            .answers
            .iter()
            .filter(|a| a.outcome == Outcome::Error)
            .count()
            + (sent as usize).saturating_sub(rec.answers.len()),
        errors: rec.errors,
        peak_mb: peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0,
        server_refused_p50: bucket_quantile_ms(&server_refused, 0.50),
        server_refused_p99: bucket_quantile_ms(&server_refused, 0.99),
        wake_p99: pct_ms(wake, 0.99),
    }
}

/// Until `running` turns false: how late each 1 ms sleep wakes.
fn wakeups(running: &std::sync::atomic::AtomicBool) -> Vec<Duration> {
    let nap = Duration::from_millis(1);
    let mut late = Vec::new();
    while running.load(std::sync::atomic::Ordering::Relaxed) {
        let t = Instant::now();
        std::thread::sleep(nap);
        late.push(t.elapsed().saturating_sub(nap));
    }
    late
}

/// The cumulative buckets (upper bound in seconds, count) of `model`'s
/// `nereid_inference_rejection_duration_seconds`, from the server's /metrics; empty if unreadable.
async fn refusal_buckets(url: &str, model: &str) -> Vec<(f64, u64)> {
    let Ok(text) = async { reqwest::get(url).await?.text().await }.await else {
        return Vec::new();
    };
    let family = "nereid_inference_rejection_duration_seconds_bucket{";
    let label = format!("model=\"{model}\"");
    text.lines()
        .filter(|l| l.starts_with(family) && l.contains(&label))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// What was added to each bucket between two scrapes.
fn bucket_delta(before: &[(f64, u64)], after: &[(f64, u64)]) -> Vec<(f64, u64)> {
    after
        .iter()
        .map(|&(le, n)| {
            let was = before.iter().find(|b| b.0 == le).map_or(0, |b| b.1);
            (le, n.saturating_sub(was))
        })
        .collect()
}

/// The upper bound (ms) of the bucket holding quantile `q`; NaN when nothing was counted.
fn bucket_quantile_ms(buckets: &[(f64, u64)], q: f64) -> f64 {
    let total = buckets.iter().map(|b| b.1).max().unwrap_or(0);
    if total == 0 {
        return f64::NAN;
    }
    let want = (q * total as f64).ceil() as u64;
    let mut sorted = buckets.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    sorted
        .iter()
        .find(|b| b.1 >= want)
        .map_or(f64::NAN, |b| b.0 * 1e3)
}

async fn run(o: Options) -> Result<bool, String> {
    let mut clients = Vec::new();
    for _ in 0..o.connections as usize {
        let ch = Channel::from_shared(o.url.clone())
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("connect {}: {e}", o.url))?;
        clients.push(Client::new(ch).max_decoding_message_size(usize::MAX));
    }
    let reqs = requests_for(&mut clients[0], &o.model).await?;
    let cap = capacity(&clients, &reqs, &o).await?;
    println!(
        "model {}: capacity {cap:.1} infer/s (closed loop, {} clients, priority 1, {} s)",
        o.model, o.capacity_concurrency, o.capacity_seconds
    );
    println!(
        "{:>5} {:>9} {:>8} {:>8} {:>10} {:>8} {:>8} {:>9} {:>8} {:>8} {:>7} {:>10} {:>11} {:>11} {:>12} {:>9} {:>8} {:>6}",
        "load",
        "offered/s",
        "sent/s",
        "lag p99",
        "accepted/s",
        "p50 ms",
        "p99 ms",
        "high p99",
        "low p99",
        "refused",
        "expired",
        "rej p99 ms",
        "refused p50",
        "refused p99",
        "srv p50/p99≤",
        "wake p99",
        "peak MB",
        "lost"
    );
    let mut json = String::new();
    let mut lost = 0;
    for &mult in &o.steps {
        tokio::time::sleep(Duration::from_secs(2)).await; // let the queues drain between steps
        let s = step(&clients, &reqs, &o, mult, cap * mult).await;
        lost += s.error_count;
        println!(
            "{:>4}x {:>9.1} {:>8.1} {:>8.2} {:>10.1} {:>8.2} {:>8.2} {:>9.2} {:>8.2} {:>8} {:>7} {:>10.2} {:>11.2} {:>11.2} {:>12} {:>9.2} {:>8.1} {:>6}",
            s.mult,
            s.offered,
            s.sent_per_s,
            s.lag_p99,
            s.accepted_per_s,
            s.p50,
            s.p99,
            s.high_p99,
            s.low_p99,
            s.refused,
            s.expired,
            s.reject_p99,
            s.refused_p50,
            s.refused_p99,
            format!("{}/{}", s.server_refused_p50, s.server_refused_p99),
            s.wake_p99,
            s.peak_mb,
            s.error_count
        );
        for e in &s.errors {
            println!("      error: {e}");
        }
        let _ = writeln!(
            json,
            "{{\"model\":\"{}\",\"capacity\":{cap:.3},\"mult\":{},\"offered\":{:.3},\"sent\":{:.3},\"lag_p99_ms\":{},\"accepted\":{:.3},\"p50_ms\":{},\"p99_ms\":{},\"high_p99_ms\":{},\"low_p99_ms\":{},\"refused\":{},\"expired\":{},\"reject_p99_ms\":{},\"refused_p99_ms\":{},\"server_refused_p99_ms\":{},\"wake_p99_ms\":{},\"peak_mb\":{:.1},\"lost\":{}}}",
            o.model,
            s.mult,
            s.offered,
            s.sent_per_s,
            num(s.lag_p99),
            s.accepted_per_s,
            num(s.p50),
            num(s.p99),
            num(s.high_p99),
            num(s.low_p99),
            s.refused,
            s.expired,
            num(s.reject_p99),
            num(s.refused_p99),
            num(s.server_refused_p99),
            num(s.wake_p99),
            s.peak_mb,
            s.error_count
        );
    }
    if let Some(path) = &o.json {
        std::fs::write(path, json).map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(lost == 0)
}

/// JSON has no NaN: a percentile of nothing is null.
fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "null".into()
    }
}

fn main() -> ExitCode {
    let o = Options::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(o)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("overload: some requests were lost (answered with an error, or not at all)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("overload: {e}");
            ExitCode::FAILURE
        }
    }
}
