//! Flag parsing and the configuration it builds.

use super::*;

fn parse(args: &[&str]) -> Result<ServerConfig, String> {
    let dir = std::env::temp_dir();
    let repo = format!("--model-repository={}", dir.display());
    let argv = ["nereid", repo.as_str()]
        .into_iter()
        .chain(args.iter().copied());
    Cli::try_parse_from(argv)
        .map_err(|e| e.to_string())?
        .into_config()
}

#[test]
fn defaults_match_tritonserver() {
    let c = parse(&[]).unwrap();
    assert_eq!(c.server_id, "triton");
    assert_eq!(c.grpc_addr.unwrap().port(), 8001);
    assert_eq!(c.http_addr.unwrap().to_string(), "0.0.0.0:8000");
    assert_eq!(c.http_max_input_size, 64 << 20);
    assert!(
        c.ignored.iter().all(|f| !f.contains("http")),
        "{:?}",
        c.ignored
    );
    assert!(c.load.auto_complete && c.manager.strict_readiness && c.exit_on_error);
    assert_eq!(c.load.default_max_batch_size, 4);
    assert_eq!(c.manager.load_threads, 4);
    assert_eq!(c.exit_timeout, Duration::from_secs(30));
    assert_eq!(c.manager.control_mode, ControlMode::None);
    assert_eq!(c.manager.poll_interval, Duration::from_secs(15));
}

#[test]
fn control_mode_flags() {
    let c = parse(&[
        "--model-control-mode=EXPLICIT",
        "--load-model=a",
        "--load-model=b",
    ])
    .unwrap();
    assert_eq!(
        (c.manager.control_mode, c.manager.startup_models.clone()),
        (
            ControlMode::Explicit,
            vec!["a".to_string(), "b".to_string()]
        )
    );
    let c = parse(&["--model-control-mode=poll", "--repository-poll-secs=2"]).unwrap();
    assert_eq!(
        (c.manager.control_mode, c.manager.poll_interval),
        (ControlMode::Poll, Duration::from_secs(2))
    );
    assert!(
        parse(&["--load-model=simple"])
            .unwrap_err()
            .contains("requires --model-control-mode=explicit")
    );
    assert!(
        parse(&[
            "--model-control-mode=explicit",
            "--load-model=*",
            "--load-model=a"
        ])
        .unwrap_err()
        .contains("must be the only")
    );
}

#[test]
fn flag_spellings() {
    let c = parse(&[
        "--strict-model-config=true",
        "--exit-on-error=off",
        "--id=nereid",
        "--grpc-port=9001",
    ])
    .unwrap();
    assert!(!c.load.auto_complete && !c.exit_on_error);
    assert_eq!(c.server_id, "nereid");
    assert_eq!(c.grpc_addr.unwrap().port(), 9001);
    assert!(
        !parse(&["--disable-auto-complete-config"])
            .unwrap()
            .load
            .auto_complete
    );
    let c = parse(&["--backend-config=onnxruntime,default-max-batch-size=16"]).unwrap();
    assert_eq!(c.load.default_max_batch_size, 16);
    assert!(parse(&["--allow-grpc=false"]).unwrap().grpc_addr.is_none());
    let c = parse(&[
        "--http-port=9000",
        "--http-address=127.0.0.1",
        "--http-max-input-size=1024",
        "--http-thread-count=2",
    ])
    .unwrap();
    assert_eq!(c.http_addr.unwrap().to_string(), "127.0.0.1:9000");
    assert_eq!(c.http_max_input_size, 1024);
    assert!(parse(&["--allow-http=false"]).unwrap().http_addr.is_none());
    assert!(parse(&["--http-max-input-size=0"]).is_err());
}

#[test]
fn telemetry_flags() {
    let c = parse(&[]).unwrap();
    assert_eq!(c.metrics_addr.unwrap().port(), 8002);
    assert_eq!(c.metrics_interval, Duration::from_secs(2));
    assert!(c.metrics.counter_latencies && c.metrics.cpu_metrics);
    assert!(c.ignored.iter().all(|f| !f.contains("metrics")));
    let c = parse(&[
        "--metrics-port=9102",
        "--metrics-address=127.0.0.1",
        "--metrics-interval-ms=250",
        "--metrics-config=counter_latencies=false",
        "--trace-config=mode=opentelemetry",
        "--trace-config=opentelemetry,url=http://collector:4317",
        "--log-format=json",
    ])
    .unwrap();
    assert_eq!(c.metrics_addr.unwrap().to_string(), "127.0.0.1:9102");
    assert_eq!(c.metrics_interval, Duration::from_millis(250));
    assert!(!c.metrics.counter_latencies);
    assert_eq!(c.trace.otel.url, "http://collector:4317");
    assert_eq!(c.log.settings().format, LogFormat::Json);
    assert!(
        parse(&["--allow-metrics=false"])
            .unwrap()
            .metrics_addr
            .is_none()
    );
    assert!(
        parse(&["--log-format=xml"])
            .unwrap_err()
            .contains("--log-format")
    );
    assert!(
        parse(&["--trace-config=rate=x"])
            .unwrap_err()
            .contains("--trace-config")
    );
    assert!(parse(&["--metrics-config=bogus=1"]).is_err());
    assert!(parse(&["--metrics-interval-ms=0"]).is_err());
}

#[test]
fn bad_flags_are_clear_errors() {
    assert!(
        parse(&["--exit-on-error=maybe"])
            .unwrap_err()
            .contains("expected true/false")
    );
    assert!(
        parse(&["--no-such-flag"])
            .unwrap_err()
            .contains("--no-such-flag")
    );
    assert!(
        parse(&["--model-control-mode=sometimes"])
            .unwrap_err()
            .contains("invalid value 'sometimes' for '--model-control-mode")
    );
    let err = Cli::try_parse_from(["nereid", "--model-repository=/definitely/not/here"])
        .unwrap()
        .into_config()
        .unwrap_err();
    assert!(err.contains("does not exist"), "{err}");
    assert!(Cli::try_parse_from(["nereid"]).is_err());
}

#[test]
fn config_limit_flags() {
    let c = parse(&[]).unwrap();
    assert_eq!(c.load.limits, ConfigLimits::default());
    assert_eq!(
        (
            c.load.limits.instances_per_model,
            c.load.limits.model_threads,
            c.load.limits.tokenizer_threads,
            c.load.limits.warmup_bytes,
            c.load.limits.text_length,
        ),
        (64, 256, 16, 256 << 20, 8192)
    );
    let c = parse(&[
        "--max-instances-per-model=2",
        "--max-model-threads=3",
        "--max-tokenizer-threads=4",
        "--max-warmup-bytes=5",
        "--max-text-length=6",
    ])
    .unwrap();
    assert_eq!(
        c.load.limits,
        ConfigLimits {
            instances_per_model: 2,
            model_threads: 3,
            tokenizer_threads: 4,
            warmup_bytes: 5,
            text_length: 6,
            session_threads: true,
        }
    );
    assert!(parse(&["--max-instances-per-model=0"]).is_err());
    assert!(parse(&["--max-text-length=1"]).is_err());
    // Every limit shows its default in --help.
    let help = <Cli as clap::CommandFactory>::command()
        .render_long_help()
        .to_string();
    for (flag, default) in [
        ("--max-instances-per-model", "64"),
        ("--max-model-threads", "256"),
        ("--max-tokenizer-threads", "16"),
        ("--max-warmup-bytes", "268435456"),
        ("--max-text-length", "8192"),
    ] {
        let at = help
            .find(flag)
            .unwrap_or_else(|| panic!("{flag} in --help"));
        let rest = &help[at..];
        let next = rest[2..].find("\n  --").map_or(rest.len(), |i| i + 2);
        assert!(
            rest[..next].contains(&format!("[default: {default}]")),
            "{flag}: {}",
            &rest[..next]
        );
    }
}

#[test]
fn object_store_repositories() {
    let c = parse(&[
        "--model-repository=s3://127.0.0.1:9000/bucket/models",
        "--model-repository=s3://bucket/path",
        "--model-cache-dir=/tmp/nereid-cache-test",
    ])
    .unwrap();
    assert_eq!(c.manager.repositories, vec![std::env::temp_dir()]);
    assert_eq!(c.manager.remotes.len(), 2);
    // A malformed URL is refused at startup, naming it (and never a credential in it).
    let e = parse(&["--model-repository=s3://key:secret@host:9000/b"]).unwrap_err();
    assert!(
        e.contains("s3://***@host:9000/b") && !e.contains("secret"),
        "{e}"
    );
    let e = parse(&["--model-repository=s3://host:port/b"]).unwrap_err();
    assert!(e.contains("neither a bucket nor host:port"), "{e}");
    let help = <Cli as clap::CommandFactory>::command()
        .render_long_help()
        .to_string();
    assert!(
        help.contains("nereid-model-cache"),
        "--model-cache-dir shows its default"
    );
}

#[test]
fn onnxruntime_global_thread_pool() {
    let c = parse(&[]).unwrap();
    assert_eq!(c.ort_global_pool, None);
    assert!(c.load.limits.session_threads);
    let c = parse(&[
        "--backend-config=onnxruntime,enable-global-threadpool=1",
        "--backend-config=onnxruntime,intra_op_thread_count=2",
        "--backend-config=onnxruntime,inter_op_thread_count=1",
    ])
    .unwrap();
    assert_eq!(
        c.ort_global_pool,
        Some(GlobalThreadPool {
            intra_op_threads: 2,
            inter_op_threads: 1
        })
    );
    assert!(
        !c.load.limits.session_threads,
        "sessions own no threads: --max-model-threads counts none per instance"
    );
    assert!(c.ignored.is_empty(), "{:?}", c.ignored);
    // Triton's spellings: any boolean form; counts of 0 or less are ONNX Runtime's default.
    let c = parse(&[
        "--backend-config=onnxruntime,enable-global-threadpool=true",
        "--backend-config=onnxruntime,intra_op_thread_count=-1",
    ])
    .unwrap();
    assert_eq!(
        c.ort_global_pool,
        Some(GlobalThreadPool {
            intra_op_threads: 0,
            inter_op_threads: 0
        })
    );
    // Without the pool the counts mean nothing, as in Triton: accepted, reported as ignored.
    let c = parse(&[
        "--backend-config=onnxruntime,enable-global-threadpool=0",
        "--backend-config=onnxruntime,intra_op_thread_count=2",
    ])
    .unwrap();
    assert_eq!(c.ort_global_pool, None);
    assert!(c.load.limits.session_threads);
    assert_eq!(c.ignored.len(), 1);
    assert!(
        c.ignored[0].starts_with("--backend-config=onnxruntime,intra_op_thread_count=2 ")
            && c.ignored[0].contains("enable-global-threadpool=1"),
        "{:?}",
        c.ignored
    );
    // Bad values refuse to start, naming the setting.
    assert_eq!(
        parse(&["--backend-config=onnxruntime,intra_op_thread_count=abc"]).unwrap_err(),
        "--backend-config 'onnxruntime,intra_op_thread_count=abc': intra_op_thread_count must be an integer (0 = one thread per core), got 'abc'"
    );
    assert!(
        parse(&["--backend-config=onnxruntime,inter_op_thread_count=1.5"])
            .unwrap_err()
            .contains("inter_op_thread_count must be an integer")
    );
    assert!(
        parse(&["--backend-config=onnxruntime,enable-global-threadpool=maybe"])
            .unwrap_err()
            .starts_with("--backend-config 'onnxruntime,enable-global-threadpool=maybe': ")
    );
    // The pool is bounded by --max-model-threads.
    assert_eq!(
        parse(&[
            "--max-model-threads=4",
            "--backend-config=onnxruntime,enable-global-threadpool=1",
            "--backend-config=onnxruntime,intra_op_thread_count=4",
            "--backend-config=onnxruntime,inter_op_thread_count=1",
        ])
        .unwrap_err(),
        "--backend-config: the global thread pool's intra_op_thread_count 4 + inter_op_thread_count 1 = 5 threads, more than --max-model-threads 4"
    );
    // Other backends' settings stay ignored.
    let c = parse(&["--backend-config=tensorflow,intra_op_thread_count=2"]).unwrap();
    assert_eq!(
        c.ignored,
        vec!["--backend-config=tensorflow,intra_op_thread_count=2".to_string()]
    );
}
