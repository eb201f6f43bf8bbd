//! Unit tests of `validate`: the table of refusals and their Triton texts.

use super::*;
use crate::model::OrtOptions;
use crate::request::{InputTensor, RequestContext, RequestedOutput};
use bytes::Bytes;

fn spec(max_batch_size: u32) -> ModelSpec {
    let io = |name: &str| IoSpec {
        name: name.into(),
        dtype: DataType::Int32,
        dims: vec![16],
        reshape: None,
        optional: false,
        labels: None,
    };
    ModelSpec {
        name: "simple".into(),
        version: 1,
        max_batch_size,
        inputs: vec![io("INPUT0"), io("INPUT1")],
        outputs: vec![io("OUTPUT0"), io("OUTPUT1")],
        model_path: "model.onnx".into(),
        instances: vec![],
        ort: OrtOptions::default(),
        dynamic_batching: None,
        text: None,
        sequence: None,
    }
}

fn input(name: &str, datatype: &str, shape: Vec<i64>, bytes: usize) -> InputTensor {
    InputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape,
        data: Bytes::from(vec![0u8; bytes]),
    }
}

fn request(inputs: Vec<InputTensor>) -> InferRequest {
    InferRequest {
        model_name: "simple".into(),
        model_version: String::new(),
        id: "r1".into(),
        inputs,
        outputs: vec![],
        params: RequestParams::default(),
    }
}

/// `validate` with an untraced context and no client deadline.
fn check(req: InferRequest, spec: &ModelSpec) -> Result<ValidRequest> {
    validate(req, RequestContext::detached(), spec)
}

#[test]
fn accepts_a_batch_and_orders_inputs_like_the_model() {
    let req = request(vec![
        input("INPUT1", "INT32", vec![3, 16], 192),
        input("INPUT0", "INT32", vec![3, 16], 192),
    ]);
    let v = check(req, &spec(8)).unwrap();
    assert_eq!(v.batch_size(), 3);
    assert_eq!(v.inputs()[0].name(), "INPUT0");
    assert_eq!(v.outputs().len(), 2);
}

#[test]
fn error_table() {
    let s = spec(8);
    let cases: Vec<(Vec<InputTensor>, &str)> = vec![
        (
            vec![
                input("INPUT0", "FP32", vec![1, 16], 64),
                input("INPUT1", "INT32", vec![1, 16], 64),
            ],
            "[request id: r1] inference input 'INPUT0' data-type is 'FP32', but model 'simple' expects 'INT32'",
        ),
        (
            vec![
                input("INPUT0", "INT32", vec![1, 15], 60),
                input("INPUT1", "INT32", vec![1, 16], 64),
            ],
            "unexpected shape for input 'INPUT0' for model 'simple'. Expected [-1,16], got [1,15].",
        ),
        (
            vec![
                input("INPUT0", "INT32", vec![9, 16], 576),
                input("INPUT1", "INT32", vec![9, 16], 576),
            ],
            "inference request batch-size must be <= 8 for 'simple'",
        ),
        (
            vec![input("INPUT0", "INT32", vec![1, 16], 64)],
            "expected 2 inputs but got 1 inputs for model 'simple'. Got input(s) ['INPUT0'], but missing required input(s) ['INPUT1'].",
        ),
        (
            vec![
                input("INPUT0", "INT32", vec![1, 16], 64),
                input("INPUT1", "INT32", vec![1, 16], 64),
                input("EXTRA", "INT32", vec![1], 4),
            ],
            "unexpected inference input 'EXTRA' for model 'simple'",
        ),
        (
            vec![
                input("INPUT0", "INT32", vec![1, 16], 63),
                input("INPUT1", "INT32", vec![1, 16], 64),
            ],
            "input byte size mismatch for input 'INPUT0' for model 'simple'. Expected 64, got 63",
        ),
        (
            vec![
                input("INPUT0", "INT32", vec![1, 16], 64),
                input("INPUT0", "INT32", vec![1, 16], 64),
            ],
            "input 'INPUT0' already exists in request",
        ),
        (
            vec![
                input("INPUT0", "INT32", vec![1, 16], 64),
                input("INPUT1", "INT32", vec![2, 16], 128),
            ],
            "input 'INPUT1' batch size does not match other inputs for 'simple'",
        ),
        (
            vec![
                input("INPUT0", "INT32", vec![], 0),
                input("INPUT1", "INT32", vec![1, 16], 64),
            ],
            "input 'INPUT0' has no shape but model requires batch dimension for 'simple'",
        ),
        (
            vec![
                input("INPUT0", "INT32", vec![-1, 16], 64),
                input("INPUT1", "INT32", vec![1, 16], 64),
            ],
            "All input dimensions should be specified for input 'INPUT0'",
        ),
    ];
    for (inputs, want) in cases {
        let err = check(request(inputs), &s).unwrap_err();
        assert_eq!(err.code, crate::error::Code::InvalidArg, "{want}");
        assert!(
            err.message.contains(want),
            "got {:?}, want {want:?}",
            err.message
        );
    }
}

#[test]
fn unknown_requested_output() {
    let mut req = request(vec![
        input("INPUT0", "INT32", vec![1, 16], 64),
        input("INPUT1", "INT32", vec![1, 16], 64),
    ]);
    req.outputs = vec![RequestedOutput::named("NOPE")];
    let err = check(req, &spec(8)).unwrap_err();
    assert!(
        err.message
            .ends_with("unexpected inference output 'NOPE' for model 'simple'")
    );
}

#[test]
fn non_batching_model_takes_exact_dims() {
    let req = request(vec![
        input("INPUT0", "INT32", vec![16], 64),
        input("INPUT1", "INT32", vec![16], 64),
    ]);
    assert_eq!(check(req, &spec(0)).unwrap().batch_size(), 1);
    let req = request(vec![
        input("INPUT0", "INT32", vec![1, 16], 64),
        input("INPUT1", "INT32", vec![16], 64),
    ]);
    let err = check(req, &spec(0)).unwrap_err();
    assert!(
        err.message.contains("Expected [16], got [1,16]."),
        "{}",
        err.message
    );
}

#[test]
fn malformed_bytes_tensor() {
    let mut s = spec(8);
    s.inputs.truncate(1);
    s.inputs[0].dtype = DataType::Bytes;
    s.inputs[0].dims = vec![-1];
    let mut inp = input("INPUT0", "BYTES", vec![1, 2], 0);
    inp.data = Bytes::from(vec![1, 0, 0, 0, b'a', 5, 0]);
    let err = check(request(vec![inp]), &s).unwrap_err();
    assert!(
        err.message.contains("incomplete string length indicator"),
        "{}",
        err.message
    );
}

#[test]
fn priority_and_timeout_against_the_queue_policy() {
    use crate::model::{DynamicBatching, QueuePolicy, TimeoutAction};
    let mut s = spec(8);
    let policy = |allow| QueuePolicy {
        max_queue_size: 0,
        default_timeout: Duration::from_micros(1000),
        timeout_action: TimeoutAction::Reject,
        allow_timeout_override: allow,
    };
    s.dynamic_batching = Some(DynamicBatching {
        preferred_batch_sizes: vec![],
        max_queue_delay: Duration::ZERO,
        preserve_ordering: false,
        priority_levels: 3,
        default_priority_level: 2,
        queue_policies: vec![policy(true), policy(false), policy(true)],
        priorities_enabled: true,
    });
    let run = |priority, timeout_us| {
        let mut req = request(vec![
            input("INPUT0", "INT32", vec![1, 16], 64),
            input("INPUT1", "INT32", vec![1, 16], 64),
        ]);
        req.params = RequestParams {
            priority,
            timeout_us,
            ..Default::default()
        };
        check(req, &s)
    };
    let v = run(0, 0).unwrap();
    assert_eq!(
        (v.level(), v.queue_timeout()),
        (1, Some(Duration::from_micros(1000)))
    );
    let v = run(1, 300).unwrap();
    assert_eq!(
        (v.level(), v.queue_timeout()),
        (0, Some(Duration::from_micros(300))),
        "a smaller override wins"
    );
    let v = run(3, 5000).unwrap();
    assert_eq!(
        v.queue_timeout(),
        Some(Duration::from_micros(1000)),
        "a larger override does not extend the default"
    );
    let err = run(4, 0).unwrap_err();
    assert!(
        err.message.contains(
            "priority 4 is out of range for model 'simple': it has priority levels 1..=3"
        ),
        "{}",
        err.message
    );
    let err = run(2, 10).unwrap_err();
    assert!(
        err.message.contains("timeout override is not allowed"),
        "{}",
        err.message
    );
}

#[test]
fn an_output_named_twice_is_refused() {
    let mut req = request(vec![
        input("INPUT0", "INT32", vec![1, 16], 64),
        input("INPUT1", "INT32", vec![1, 16], 64),
    ]);
    let out = RequestedOutput::named;
    req.outputs = vec![out("OUTPUT0"), out("OUTPUT1"), out("OUTPUT0")];
    let err = check(req, &spec(8)).unwrap_err();
    assert_eq!(err.code, crate::error::Code::InvalidArg);
    assert!(
        err.message
            .ends_with("output 'OUTPUT0' already exists in request"),
        "{}",
        err.message
    );
}

fn two_rows() -> ValidRequest {
    let req = request(vec![
        input("INPUT0", "INT32", vec![2, 16], 128),
        input("INPUT1", "INT32", vec![2, 16], 128),
    ]);
    check(req, &spec(8)).unwrap()
}

fn tokens(shape: Vec<i64>, dtype: DataType, real_tokens: usize) -> TokenInputs {
    let bytes = shape.iter().product::<i64>() as usize * dtype.byte_size().unwrap();
    TokenInputs {
        inputs: vec![
            Tensor::new("input_ids", dtype, shape, Bytes::from(vec![0u8; bytes])).unwrap(),
        ],
        seq_len: 5,
        real_tokens,
    }
}

#[test]
fn token_inputs_must_fit_the_request() {
    let v = tokenized(two_rows(), tokens(vec![2, 5], DataType::Int64, 7)).unwrap();
    assert_eq!((v.seq_len(), v.real_tokens()), (Some(5), 7));
    assert_eq!(v.inputs()[0].name(), "input_ids");
    assert_eq!(v.id(), "r1");
    let err = tokenized(two_rows(), tokens(vec![2, 4], DataType::Int64, 7)).unwrap_err();
    assert_eq!(err.code, crate::error::Code::Internal);
    assert_eq!(
        err.message,
        "[request id: r1] token input 'input_ids' is INT64 [2,4], expected INT64 [2,5]"
    );
    let err = tokenized(two_rows(), tokens(vec![2, 5], DataType::Int32, 7)).unwrap_err();
    assert!(err.message.contains("is INT32 [2,5]"), "{}", err.message);
    let err = tokenized(two_rows(), tokens(vec![2, 5], DataType::Int64, 11)).unwrap_err();
    assert!(
        err.message
            .ends_with("11 real tokens do not fit in 2 rows of 5"),
        "{}",
        err.message
    );
}

#[test]
fn the_context_gets_the_id_and_a_queue_timeout_within_the_deadline() {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let ctx = RequestContext::new(
        tokio::time::Instant::now(),
        Some(deadline),
        tracing::Span::none(),
    );
    let req = request(vec![
        input("INPUT0", "INT32", vec![1, 16], 64),
        input("INPUT1", "INT32", vec![1, 16], 64),
    ]);
    let v = validate(req, ctx, &spec(8)).unwrap();
    assert_eq!(v.context().id(), "r1");
    assert_eq!(v.context().deadline(), Some(deadline));
    assert_eq!(v.level(), 0);
    let left = v.queue_timeout().expect("the deadline bounds the wait");
    assert!(
        left > Duration::ZERO && left <= Duration::from_secs(2),
        "{left:?}"
    );
}
