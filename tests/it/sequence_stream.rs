//! Sequences through ONNX Runtime on the generated client-example models
//! (`client_examples_repository/`, scripts/gen_sequence_models.py): two sequences interleaved on
//! one `ModelStreamInfer` stream keep their order, the graph sees START, END and CORRID, and a
//! bad request is answered in-band while the others go on.

use std::path::Path;

use nereid::pb::inference::ModelInferRequest;
use tokio_stream::StreamExt;

use crate::common::*;
use crate::sequence::{Id, seq_request};

/// A temporary repository with copies of the two generated sequence models.
fn examples_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("client_examples_repository");
    for model in ["simple_sequence", "simple_dyna_sequence"] {
        let to = dir.path().join(model);
        std::fs::create_dir_all(to.join("1")).unwrap();
        for file in ["config.pbtxt", "1/model.onnx"] {
            std::fs::copy(src.join(model).join(file), to.join(file)).unwrap();
        }
    }
    dir
}

/// Sends `reqs` on one stream, half-closes, and returns each response's OUTPUT or error text.
async fn stream(s: &TestServer, reqs: Vec<ModelInferRequest>) -> Vec<Result<i32, String>> {
    let mut c = s.client.clone();
    let mut responses =
        tokio::time::timeout(RPC_TIMEOUT, c.model_stream_infer(tokio_stream::iter(reqs)))
            .await
            .expect("stream opens")
            .expect("stream accepted")
            .into_inner();
    let mut out = Vec::new();
    while let Some(item) = tokio::time::timeout(RPC_TIMEOUT, responses.next())
        .await
        .expect("stream makes progress")
    {
        let item = item.expect("in-band errors only");
        out.push(if item.error_message.is_empty() {
            let resp = item.infer_response.expect("a response");
            Ok(output_i32(&resp, "OUTPUT")[0])
        } else {
            Err(item.error_message)
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_sequences_keep_their_order_on_one_stream() {
    let repo = examples_repo();
    let s = TestServer::start(repo.path()).await.owning(repo);
    let seq = |model, v, id, start, end| seq_request(model, v, id, start, end);
    let (m, dyna) = ("simple_sequence", "simple_dyna_sequence");
    let got = stream(
        &s,
        vec![
            seq(m, 0, Id::Int(1000), true, false),
            seq(m, 100, Id::Str("b"), true, false),
            seq(dyna, 0, Id::Int(1000), true, false),
            seq(m, 11, Id::Int(1000), false, false),
            seq(m, -11, Id::Str("b"), false, false),
            seq(m, 5, Id::Int(999), false, false),
            seq(dyna, 1, Id::Int(1000), false, true),
            seq(m, 7, Id::Int(1000), false, true),
            seq(m, -7, Id::Str("b"), false, true),
        ],
    )
    .await;
    let e28 = "inference request for sequence 999 to model 'simple_sequence' must specify the START flag on the first request of the sequence";
    assert_eq!(
        got,
        vec![
            Ok(1),
            Ok(101),
            Ok(1),
            Ok(11),
            Ok(-11),
            Err(e28.to_string()),
            Ok(1 + 1000),
            Ok(7),
            Ok(-7),
        ]
    );
}
