//! Requests and responses in the server's own terms, independent of any wire format.
//!
//! - `context`: `RequestContext`, what travels with a request from its front-end to its queue
//!   entry (id, arrival, client deadline, schedule, span), and the `Origin` it is opened from.
//! - `params`: the request and output parameters both front-ends parse into one typed form.

mod context;
mod params;

use bytes::Bytes;

pub(crate) use context::{Origin, Protocol, RequestContext, Schedule, TraceContext};
pub(crate) use params::{
    CorrelationId, Expected, OutputError, ParamError, ParamValue, RequestParams, SequenceParams,
};

use crate::tensor::Tensor;

/// One inference request as a front-end decoded it. Nothing here is trusted yet:
/// `validate::validate` turns it, with its `RequestContext`, into a `ValidRequest` against a
/// model's spec.
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

/// An output the request names, with its parameters (`RequestedOutput::parse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedOutput {
    pub name: String,
    /// Top-K classification instead of the raw tensor (`classification` parameter).
    pub classification: Option<u32>,
    /// `binary_data` (HTTP's binary tensor extension): this output's format; `None` = the
    /// request's `binary_data_output`. gRPC answers every output raw.
    pub binary: Option<bool>,
}

impl RequestedOutput {
    /// The output `name` with no parameters.
    pub fn named(name: impl Into<String>) -> Self {
        RequestedOutput {
            name: name.into(),
            classification: None,
            binary: None,
        }
    }
}

/// What a request says about itself ahead of its tensors: enough to refuse it for overload
/// while the tensors are still arriving (`Core::refuse_early`).
#[derive(Debug, Clone)]
pub struct RequestHead<'a> {
    pub model_name: &'a str,
    pub model_version: &'a str,
    pub id: &'a str,
    pub params: RequestParams,
}

#[derive(Debug, Clone)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: i64,
    pub id: String,
    /// In the order the request asked for them (or config order when it asked for none).
    pub outputs: Vec<Tensor>,
}
