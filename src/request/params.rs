//! The parameters a request and its outputs carry, parsed once for both front-ends.
//!
//! A front-end turns each wire value into a `ParamValue` (a gRPC `InferParameter` member, a
//! JSON value) and hands the pairs to `RequestParams::parse` or `RequestedOutput::parse`; the
//! meaning of every key (which keys the server reads, which kinds each takes, the reserved
//! `triton_` prefix) lives only here. Errors are typed (`ParamError`, `OutputError`) so that
//! each front-end words them Triton's way for its protocol.

use super::RequestedOutput;

/// A parameter value as either wire carries it, before its key gives it a meaning.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamValue<'a> {
    Bool(bool),
    /// gRPC `int64_param`; a JSON integer that fits in an i64.
    Int(i64),
    /// An unsigned value only a u64 holds: gRPC `uint64_param` where the protocol allows it
    /// (`priority`), a JSON integer above i64::MAX.
    Uint(u64),
    Double(f64),
    Str(&'a str),
    /// No usable value: a gRPC parameter with no member set (or a member the protocol does not
    /// allow for the key), a JSON object, array or null.
    Other,
}

impl ParamValue<'_> {
    /// A non-negative integer, whichever integer kind carried it.
    pub fn unsigned(self) -> Option<u64> {
        match self {
            ParamValue::Int(n) => u64::try_from(n).ok(),
            ParamValue::Uint(n) => Some(n),
            _ => None,
        }
    }

    /// The value of the boolean parameter `key`.
    pub fn boolean(self, key: &str) -> Result<bool, ParamError> {
        match self {
            ParamValue::Bool(b) => Ok(b),
            _ => Err(ParamError::kind(key, Expected::Bool)),
        }
    }
}

/// What a key accepts, for the front-end to word a `ParamError::Kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    Bool,
    /// `priority`: a non-negative integer (gRPC: `int64_param` or `uint64_param`).
    Priority,
    /// `timeout`: a non-negative integer of microseconds (gRPC: `int64_param`).
    Timeout,
    /// `sequence_id`: an integer or a string.
    IntOrString,
    /// `classification`: a non-negative number of classes.
    Classes,
    /// `log_verbose_level`: an unsigned 32-bit integer.
    Uint32,
    String,
    /// A `file:<path>` load parameter: the file's bytes.
    Bytes,
    /// A custom parameter: bool, integer, float or string.
    Scalar,
}

/// A parameter the server refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamError {
    /// `key` holds a value of a kind it does not take.
    Kind { key: String, expected: Expected },
    /// A key with the `triton_` prefix that is not one the server accepts.
    Reserved { key: String },
    /// A key this kind of request does not have (load parameters).
    Unknown { key: String },
    /// A string `sequence_id` longer than `MAX_STRING_CORRELATION_ID` bytes.
    CorrelationIdTooLong,
}

impl ParamError {
    pub fn kind(key: &str, expected: Expected) -> Self {
        ParamError::Kind {
            key: key.to_string(),
            expected,
        }
    }
}

/// Longest string `sequence_id` Triton accepts, in bytes.
pub(crate) const MAX_STRING_CORRELATION_ID: usize = 128;

/// A sequence's correlation id: an unsigned integer or a string. The kind is part of the
/// identity (`5` and `"5"` are two sequences); `0` and `""` mean "not part of a sequence".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CorrelationId {
    Uint(u64),
    Str(String),
}

impl Default for CorrelationId {
    /// A request without `sequence_id` has the integer id 0.
    fn default() -> Self {
        CorrelationId::Uint(0)
    }
}

impl CorrelationId {
    /// `0` or `""`: the request names no sequence.
    pub fn is_none(&self) -> bool {
        match self {
            CorrelationId::Uint(n) => *n == 0,
            CorrelationId::Str(s) => s.is_empty(),
        }
    }
}

impl std::fmt::Display for CorrelationId {
    /// The decimal integer or the raw string, as Triton prints an id in its messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CorrelationId::Uint(n) => write!(f, "{n}"),
            CorrelationId::Str(s) => f.write_str(s),
        }
    }
}

/// The sequence parameters of a request (`sequence_id`, `sequence_start`, `sequence_end`).
/// Only a model with `sequence_batching` reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SequenceParams {
    pub id: CorrelationId,
    pub start: bool,
    pub end: bool,
}

/// Keys with the `triton_` prefix a client may send (Triton's reserved request parameters).
const RESERVED_ALLOWED: &[&str] = &["triton_enable_empty_final_response"];

/// The request-level parameters the server itself interprets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestParams {
    /// 0 = the model's default level.
    pub priority: u64,
    /// Queue timeout in microseconds; 0 = none.
    pub timeout_us: u64,
    /// `binary_data_output` (HTTP's binary tensor extension): the format of outputs that do
    /// not name their own. gRPC answers every output raw.
    pub binary_output: bool,
    pub sequence: SequenceParams,
}

impl RequestParams {
    /// Parses a request's parameters: the server's keys (`priority`, `timeout`, the sequence
    /// keys, `binary_data_output`) must have their kind; other `triton_` keys are reserved;
    /// any other key is the model's and must be a scalar.
    pub fn parse<'a>(
        params: impl IntoIterator<Item = (&'a str, ParamValue<'a>)>,
    ) -> Result<RequestParams, ParamError> {
        let mut p = RequestParams::default();
        for (key, v) in params {
            let want = |expected| ParamError::kind(key, expected);
            match key {
                "priority" => p.priority = v.unsigned().ok_or_else(|| want(Expected::Priority))?,
                "timeout" => p.timeout_us = v.unsigned().ok_or_else(|| want(Expected::Timeout))?,
                "sequence_id" => {
                    p.sequence.id = match v {
                        // gRPC's int64_param is stored as uint64: a negative value wraps, as in
                        // Triton (a front-end that refuses negative ids maps them to `Other`).
                        ParamValue::Int(n) => CorrelationId::Uint(n as u64),
                        ParamValue::Uint(n) => CorrelationId::Uint(n),
                        ParamValue::Str(s) if s.len() > MAX_STRING_CORRELATION_ID => {
                            return Err(ParamError::CorrelationIdTooLong);
                        }
                        ParamValue::Str(s) => CorrelationId::Str(s.to_string()),
                        _ => return Err(want(Expected::IntOrString)),
                    }
                }
                "binary_data_output" => p.binary_output = v.boolean(key)?,
                "sequence_start" => p.sequence.start = v.boolean(key)?,
                "sequence_end" => p.sequence.end = v.boolean(key)?,
                k if RESERVED_ALLOWED.contains(&k) => {
                    v.boolean(key)?;
                }
                k if k.starts_with("triton_") => {
                    return Err(ParamError::Reserved {
                        key: key.to_string(),
                    });
                }
                _ if v == ParamValue::Other => return Err(want(Expected::Scalar)),
                _ => {}
            }
        }
        Ok(p)
    }
}

/// Why a requested output is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputError {
    Param(ParamError),
}

impl From<ParamError> for OutputError {
    fn from(e: ParamError) -> Self {
        OutputError::Param(e)
    }
}

impl RequestedOutput {
    /// Parses one requested output's parameters, `param` looking a key up among them:
    /// `binary_data`, then `classification` (0 = the tensor itself). The shared memory keys are
    /// each front-end's (their kinds and defaults differ by protocol).
    pub fn parse<'a>(
        name: String,
        param: impl Fn(&str) -> Option<ParamValue<'a>>,
    ) -> Result<RequestedOutput, OutputError> {
        let binary = param("binary_data")
            .map(|v| v.boolean("binary_data"))
            .transpose()?;
        let classification = match param("classification") {
            None => None,
            Some(v) => {
                let k = v
                    .unsigned()
                    .ok_or_else(|| ParamError::kind("classification", Expected::Classes))?;
                (k > 0).then(|| u32::try_from(k).unwrap_or(u32::MAX))
            }
        };
        Ok(RequestedOutput {
            name,
            classification,
            binary,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ParamValue as V;

    fn parse(pairs: &[(&'static str, V<'static>)]) -> Result<RequestParams, ParamError> {
        RequestParams::parse(pairs.iter().copied())
    }

    #[test]
    fn request_keys_and_kinds() {
        let p = parse(&[
            ("priority", V::Uint(2)),
            ("timeout", V::Int(100)),
            ("binary_data_output", V::Bool(true)),
            ("sequence_id", V::Str("s")),
            ("sequence_start", V::Bool(true)),
            ("triton_enable_empty_final_response", V::Bool(false)),
            ("custom", V::Double(1.5)),
        ])
        .unwrap();
        assert_eq!(
            p,
            RequestParams {
                priority: 2,
                timeout_us: 100,
                binary_output: true,
                sequence: SequenceParams {
                    id: CorrelationId::Str("s".into()),
                    start: true,
                    end: false,
                },
            }
        );
        let wrapped = parse(&[("sequence_id", V::Int(-1)), ("sequence_end", V::Bool(true))])
            .unwrap()
            .sequence;
        assert_eq!(wrapped.id, CorrelationId::Uint(u64::MAX));
        assert!(wrapped.end && !wrapped.start);
        let long = "x".repeat(MAX_STRING_CORRELATION_ID + 1);
        assert_eq!(
            RequestParams::parse([("sequence_id", V::Str(&long))]),
            Err(ParamError::CorrelationIdTooLong)
        );
        let most = "x".repeat(MAX_STRING_CORRELATION_ID);
        assert!(RequestParams::parse([("sequence_id", V::Str(&most))]).is_ok());
        let kind = |key: &str, expected| {
            Err(ParamError::Kind {
                key: key.into(),
                expected,
            })
        };
        assert_eq!(
            parse(&[("priority", V::Int(-1))]),
            kind("priority", Expected::Priority)
        );
        assert_eq!(
            parse(&[("timeout", V::Other)]),
            kind("timeout", Expected::Timeout)
        );
        assert_eq!(
            parse(&[("sequence_id", V::Bool(true))]),
            kind("sequence_id", Expected::IntOrString)
        );
        assert_eq!(
            parse(&[("sequence_end", V::Int(1))]),
            kind("sequence_end", Expected::Bool)
        );
        assert_eq!(
            parse(&[("custom", V::Other)]),
            kind("custom", Expected::Scalar)
        );
        assert_eq!(
            parse(&[("triton_x", V::Bool(true))]),
            Err(ParamError::Reserved {
                key: "triton_x".into()
            })
        );
    }

    fn output(pairs: &[(&'static str, V<'static>)]) -> Result<RequestedOutput, OutputError> {
        RequestedOutput::parse("y".into(), |k| {
            pairs.iter().find(|(key, _)| *key == k).map(|(_, v)| *v)
        })
    }

    #[test]
    fn output_keys() {
        let o = output(&[
            ("classification", V::Int(3)),
            ("binary_data", V::Bool(false)),
        ])
        .unwrap();
        assert_eq!((o.classification, o.binary), (Some(3), Some(false)));
        assert_eq!(
            output(&[("classification", V::Int(0))])
                .unwrap()
                .classification,
            None
        );
        assert_eq!(
            output(&[("classification", V::Uint(u64::MAX))])
                .unwrap()
                .classification,
            Some(u32::MAX)
        );
        assert_eq!(
            output(&[("classification", V::Int(-2))]),
            Err(OutputError::Param(ParamError::kind(
                "classification",
                Expected::Classes
            )))
        );
    }
}
