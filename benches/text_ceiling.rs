//! The in-process ceiling of a text model, for `scripts/bench_text.sh`: the server's own tokenizer,
//! ONNX Runtime sessions and pooling in one process, with no network, no queue and no batcher.
//! The model's config decides the instances and the threads per session, exactly as in the
//! server. For each batch size B every instance thread loops: take the next B sentences, tokenize
//! them (padded to the longest), run, pool; throughput is sentences per second over a window.
//!
//! Then the ceiling of a server at concurrency 1: one instance, batch 1, one request at a time
//! (the next sentence starts when the last one's embedding is pooled), with its per-sentence
//! latency.
//!
//! cargo bench --bench text_ceiling -- <repository> <model> <sentences.json> [seconds] [B...]
//!
//! Prints `batch <B> <sentences/s>` per batch size, then `best <B> <sentences/s>`, then
//! `serial <sentences/s> <p50 ms> <p99 ms>`.

#![allow(
    clippy::disallowed_types,
    reason = "a benchmark measures real time on its own threads"
)]

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nereid::internals::ATTENTION_MASK;
use nereid::internals::ModelSpec;
use nereid::internals::OrtBackend;
use nereid::internals::post;
use nereid::internals::to_spec;
use nereid::internals::{DataType, Tensor, bytes_codec};
use nereid::internals::{Encoder, prepare};
use nereid::internals::{fill_server_defaults, normalize, read_config};
use nereid::{Backend, Runner};

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; only the positional arguments matter.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if args.len() < 3 {
        eprintln!(
            "usage: text_ceiling <repository> <model> <sentences.json> [seconds] [batch sizes...]"
        );
        return ExitCode::from(2);
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("text_ceiling: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let dir = Path::new(&args[0]).join(&args[1]);
    let text = std::fs::read_to_string(&args[2]).map_err(|e| format!("{}: {e}", args[2]))?;
    let sentences: Vec<String> = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let seconds: f64 = args
        .get(3)
        .map_or(Ok(5.0), |s| s.parse())
        .map_err(|_| "seconds")?;
    let sizes: Vec<usize> = if args.len() > 4 {
        args[4..]
            .iter()
            .map(|s| s.parse().map_err(|_| format!("batch size '{s}'")))
            .collect::<Result<_, _>>()?
    } else {
        vec![1, 4, 8, 16, 32, 64]
    };

    let backend = OrtBackend::init(None).map_err(|e| e.message)?;
    let err = |e: nereid::Error| e.message;
    let mut cfg = read_config(&dir, None, false).map_err(err)?;
    fill_server_defaults(&mut cfg, &args[1], Some(&dir.join("1"))).map_err(err)?;
    normalize(&mut cfg, &[]).map_err(err)?;
    let mut spec = to_spec(&cfg, 1, &dir).map_err(err)?;
    let io = backend.inspect(&dir.join("1/model.onnx")).map_err(err)?;
    let encoder = prepare(&mut spec, &io)
        .map_err(err)?
        .ok_or("not a text model")?;
    let mut runners = Vec::new();
    for group in &spec.instances {
        for i in 0..group.count {
            runners.push(backend.create_runner(&spec, group, i).map_err(err)?);
        }
    }
    eprintln!(
        "text_ceiling: {} sentences, {} instance(s) of '{}', {seconds} s per batch size",
        sentences.len(),
        runners.len(),
        args[1]
    );

    let mut best = (0, 0.0);
    for &b in &sizes {
        let rate = measure(&spec, &encoder, &mut runners, &sentences, b, seconds)?;
        println!("batch {b} {rate:.1}");
        if rate > best.1 {
            best = (b, rate);
        }
    }
    println!("best {} {:.1}", best.0, best.1);
    let (rate, p50, p99) = measure_serial(&spec, &encoder, &mut runners[0], &sentences, seconds)?;
    println!("serial {rate:.1} {p50:.3} {p99:.3}");
    Ok(())
}

/// One batch of `b` sentences from `start` (wrapping around the set): tokenize, run, pool.
fn run_batch(
    spec: &ModelSpec,
    encoder: &Encoder,
    runner: &mut Box<dyn Runner>,
    sentences: &[String],
    start: usize,
    b: usize,
) -> Result<(), String> {
    let text = spec.text.as_ref().expect("text model");
    let batch: Vec<&[u8]> = (start..start + b)
        .map(|i| sentences[i % sentences.len()].as_bytes())
        .collect();
    let texts = Tensor::new(
        text.input.clone(),
        DataType::Bytes,
        vec![b as i64, 1],
        bytes_codec::encode(batch),
    )
    .map_err(|e| e.message)?;
    let inputs = encoder
        .encode_inputs(&[texts])
        .map_err(|e| e.message)?
        .inputs;
    let mask = inputs
        .iter()
        .find(|t| t.name() == ATTENTION_MASK)
        .expect("mask");
    let lengths = post::row_lengths(mask);
    let out = runner
        .run(inputs, &[text.graph_output.as_str()])
        .map_err(|e| e.message)?;
    for t in out.tensors {
        post::finish(t, &lengths, text.pooling, text.normalize, &text.output)
            .map_err(|e| e.message)?;
    }
    Ok(())
}

/// Concurrency 1 in process: one instance, batch 1, one sentence at a time. Sentences per second
/// and the p50 and p99 latency of one sentence (ms), after a warm-up.
fn measure_serial(
    spec: &ModelSpec,
    encoder: &Encoder,
    runner: &mut Box<dyn Runner>,
    sentences: &[String],
    seconds: f64,
) -> Result<(f64, f64, f64), String> {
    let warm_until = Instant::now() + Duration::from_secs_f64((seconds / 5.0).max(0.5));
    let mut next = 0;
    while Instant::now() < warm_until {
        run_batch(spec, encoder, runner, sentences, next, 1)?;
        next += 1;
    }
    let mut took = Vec::new();
    let t0 = Instant::now();
    let stop = t0 + Duration::from_secs_f64(seconds);
    while Instant::now() < stop {
        let t = Instant::now();
        run_batch(spec, encoder, runner, sentences, next, 1)?;
        took.push(t.elapsed());
        next += 1;
    }
    if took.is_empty() {
        return Err("no sentence finished within the serial window".into());
    }
    let rate = took.len() as f64 / t0.elapsed().as_secs_f64();
    took.sort();
    let pct = |q: f64| {
        let i = ((q * took.len() as f64).ceil() as usize).clamp(1, took.len()) - 1;
        took[i].as_secs_f64() * 1e3
    };
    Ok((rate, pct(0.5), pct(0.99)))
}

/// Sentences per second with every instance running batches of `b` concurrently.
fn measure(
    spec: &ModelSpec,
    encoder: &Encoder,
    runners: &mut [Box<dyn Runner>],
    sentences: &[String],
    b: usize,
    seconds: f64,
) -> Result<f64, String> {
    let cursor = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let measuring = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    let one = |runner: &mut Box<dyn Runner>| -> Result<(), String> {
        let start = cursor.fetch_add(b, Ordering::Relaxed);
        run_batch(spec, encoder, runner, sentences, start, b)
    };
    let elapsed = std::thread::scope(|scope| {
        let workers: Vec<_> = runners
            .iter_mut()
            .map(|runner| {
                let (one, done, measuring, stop) = (&one, &done, &measuring, &stop);
                scope.spawn(move || -> Result<(), String> {
                    while !stop.load(Ordering::Relaxed) {
                        one(runner)?;
                        if measuring.load(Ordering::Relaxed) {
                            done.fetch_add(b, Ordering::Relaxed);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64((seconds / 5.0).max(0.5))); // warm up
        measuring.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        let counted = done.load(Ordering::Relaxed);
        let elapsed = t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().map_err(|_| "a worker panicked".to_string())??;
        }
        Ok::<_, String>(counted as f64 / elapsed)
    })?;
    Ok(elapsed)
}
