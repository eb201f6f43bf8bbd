//! Requests and responses in the server's own terms, independent of any wire format.

use bytes::Bytes;
use tokio::time::Instant;

use crate::tensor::Tensor;

/// One inference request as a front-end decoded it. Nothing here is trusted yet:
/// `validate::validate` turns it into a `ValidRequest` against a model's spec.
#[derive(Debug, Clone)]
pub struct InferRequest {
    pub model_name: String,
    /// Empty means the highest READY version.
    pub model_version: String,
    pub id: String,
    pub inputs: Vec<InputTensor>,
    /// Empty means every output of the model.
    pub outputs: Vec<RequestedOutput>,
    pub params: RequestParams,
    /// When the front-end received the request; the start of its end-to-end duration.
    pub arrival: Instant,
}

#[derive(Debug, Clone)]
pub struct InputTensor {
    pub name: String,
    /// The datatype string as sent; checked against the model in `validate`.
    pub datatype: String,
    pub shape: Vec<i64>,
    /// Raw little-endian bytes (BYTES: length-prefixed elements).
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedOutput {
    pub name: String,
    /// Top-K classification instead of the raw tensor (`classification` parameter).
    pub classification: Option<u32>,
}

/// The request-level parameters the server itself interprets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestParams {
    /// 0 = the model's default level.
    pub priority: u64,
    /// Queue timeout in microseconds; 0 = none.
    pub timeout_us: u64,
    /// The client's own deadline (`grpc-timeout`, an HTTP timeout header): past it the answer
    /// is of no use, so the request may not wait beyond it.
    pub deadline: Option<Instant>,
}

/// What a request says about itself ahead of its tensors: enough to refuse it for overload
/// while the tensors are still arriving (`Core::refuse_early`).
#[derive(Debug, Clone)]
pub struct RequestHead<'a> {
    pub model_name: &'a str,
    pub model_version: &'a str,
    pub id: &'a str,
    pub params: RequestParams,
    /// When the head arrived.
    pub arrival: Instant,
}

#[derive(Debug, Clone)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: i64,
    pub id: String,
    /// In the order the request asked for them (or config order when it asked for none).
    pub outputs: Vec<Tensor>,
}
