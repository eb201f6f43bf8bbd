//! Tokenization: the `Encoder` (the only code that names `tokenizers::`) and the pool of OS
//! threads that runs it off the async workers.
//!
//! Contracts: the pool's queue is bounded (`try_send`; full → Unavailable at once, like the
//! scheduler's queue); every job taken is answered on its oneshot unless its caller has gone;
//! a panic inside the tokenizer becomes an Internal error for that request, never a dead thread.
//! Dropping the pool (or `shutdown`) closes the queue and the threads exit.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, TrySendError};
use std::time::Duration;
use tokenizers::{Tokenizer, TruncationParams};
use tokio::sync::oneshot;

use super::admission::{self, Charge, TokenizerLoad};
use crate::error::{Error, Rejection, Result};
use crate::model::ModelSpec;
use crate::model::io::ModelIo;
use crate::model::text::{
    ATTENTION_MASK, DEFAULT_MAX_LENGTH, INPUT_IDS, Padding, TOKEN_TYPE_IDS, TextSpec, Truncation,
};
use crate::tensor::{DataType, Tensor, bytes_codec};
use crate::validate::{self, TokenInputs, ValidRequest};

/// Loads the tokenizer of a text model, resolves the settings that depend on the tokenizer file
/// and on the graph (`TextSpec`'s "at load" fields, written into `spec`), and returns the encoder.
/// `None` for a model without text preprocessing. Errors are load errors naming the file.
pub fn prepare(spec: &mut ModelSpec, io: &ModelIo) -> Result<Option<Encoder>> {
    let model = spec.name.clone();
    let output_dims = spec
        .outputs
        .first()
        .map(|o| o.dims.clone())
        .unwrap_or_default();
    let Some(text) = spec.text.as_mut() else {
        return Ok(None);
    };
    let mut tokenizer = Tokenizer::from_file(&text.tokenizer).map_err(|e| {
        Error::invalid_arg(format!(
            "model '{model}': cannot load tokenizer '{}': {e}",
            text.tokenizer.display()
        ))
    })?;
    if text.max_length == 0 {
        text.max_length = tokenizer
            .get_truncation()
            .map_or(DEFAULT_MAX_LENGTH, |t| t.max_length);
    }
    // The file's own padding (e.g. Fixed(128)) would pad every text; the batch pads instead,
    // with the file's padding values.
    if let Some(p) = tokenizer.get_padding() {
        (text.pad_id, text.pad_type_id) = (p.pad_id as i64, p.pad_type_id as i64);
    } else if let Some(id) = tokenizer.token_to_id("[PAD]") {
        text.pad_id = id as i64;
    }
    tokenizer.with_padding(None);
    let truncation = (text.truncation == Truncation::Truncate).then(|| TruncationParams {
        max_length: text.max_length,
        ..Default::default()
    });
    tokenizer.with_truncation(truncation).map_err(|e| {
        Error::invalid_arg(format!(
            "model '{model}': max_length {} does not suit tokenizer '{}': {e}",
            text.max_length,
            text.tokenizer.display()
        ))
    })?;
    text.bind_graph(&model, &output_dims, io)?;
    Ok(Some(Encoder {
        tokenizer,
        spec: Arc::new(text.clone()),
        model,
    }))
}

/// Texts → token tensors for one model. Each pool thread owns a clone, so tokenizers with
/// internal caches (BPE) never contend on them.
#[derive(Clone)]
pub struct Encoder {
    tokenizer: Tokenizer,
    spec: Arc<TextSpec>,
    model: String,
}

impl Encoder {
    /// Replaces the text input of a request with the token inputs.
    pub fn encode_request(&self, req: ValidRequest) -> Result<ValidRequest> {
        match self.encode_inputs(req.inputs()) {
            Ok(e) => validate::tokenized(
                req,
                TokenInputs {
                    inputs: e.inputs,
                    seq_len: e.seq_len,
                    real_tokens: e.real_tokens,
                },
            ),
            Err(e) => Err(e.with_request_id(req.id())),
        }
    }

    /// Tokenizes the `[rows, 1]` BYTES text input among `inputs` into INT64 `[rows, width]`
    /// `input_ids`, `attention_mask` (and `token_type_ids` when the graph takes it), padded to
    /// the longest text (or to max_length).
    pub fn encode_inputs(&self, inputs: &[Tensor]) -> Result<Encoded> {
        let spec = &*self.spec;
        let (model, name) = (&self.model, &spec.input);
        let text = inputs.iter().find(|t| t.name() == name).ok_or_else(|| {
            Error::internal(format!("text model '{model}' got no input '{name}'"))
        })?;
        let rows = text.shape().first().copied().unwrap_or(0).max(0) as usize;
        if rows == 0 {
            return Err(Error::invalid_arg(format!(
                "input '{name}' of model '{model}' holds no texts"
            )));
        }
        let elements = bytes_codec::decode(text.data(), text.element_count())
            .map_err(|e| Error::invalid_arg(format!("input '{name}' of model '{model}': {e}")))?;
        let mut encodings = Vec::with_capacity(rows);
        for (i, bytes) in elements.iter().enumerate() {
            let what = || format!("input '{name}' of model '{model}': text {i}");
            if bytes.len() > spec.max_text_bytes {
                return Err(Error::invalid_arg(format!(
                    "{} is {} bytes, more than the model's max_text_bytes {}",
                    what(),
                    bytes.len(),
                    spec.max_text_bytes
                )));
            }
            let s = std::str::from_utf8(bytes)
                .map_err(|e| Error::invalid_arg(format!("{} is not valid UTF-8: {e}", what())))?;
            let encoding = self
                .encode_text(s)
                .map_err(|e| Error::invalid_arg(format!("{} cannot be tokenized: {e}", what())))?;
            if spec.truncation == Truncation::Reject && encoding.tokens > spec.max_length {
                let counted = if encoding.prefix < s.len() {
                    format!(
                        "at least {} tokens in its first {} of {} bytes",
                        encoding.tokens,
                        encoding.prefix,
                        s.len()
                    )
                } else {
                    format!("{} tokens", encoding.tokens)
                };
                return Err(Error::invalid_arg(format!(
                    "{} has {counted}, more than max_length {} (the model's truncation is 'reject')",
                    what(),
                    spec.max_length
                )));
            }
            let encoding = encoding.encoding;
            encodings.push(encoding);
        }
        let longest = encodings.iter().map(|e| e.len()).max().unwrap_or(0);
        let width = match spec.padding {
            Padding::Longest => longest.max(1),
            Padding::MaxLength => spec.max_length,
        };
        // `width` is at most --max-text-length (checked at load) and `rows` at most the texts the
        // request holds; the sizes are still checked, and reserved so that they fail as errors.
        let tokens = rows.checked_mul(width);
        if spec.max_batch_tokens > 0 && tokens.is_none_or(|n| n > spec.max_batch_tokens) {
            return Err(Error::invalid_arg(format!(
                "request to model '{model}' needs {rows} texts × {width} tokens = {} padded tokens, more than the model's max_batch_tokens {}; send fewer or shorter texts per request",
                tokens.map_or_else(|| "too many".to_string(), |n| n.to_string()),
                spec.max_batch_tokens
            )));
        }
        let bytes = tokens
            .and_then(|n| crate::tensor::checked_byte_len(n, 8))
            .ok_or_else(|| {
                Error::invalid_arg(format!(
                    "request to model '{model}' needs {rows} texts × {width} tokens, too many to hold"
                ))
            })?;
        let reserve = || -> Result<Vec<u8>> {
            let mut v = Vec::new();
            v.try_reserve_exact(bytes).map_err(|_| {
                Error::unavailable(format!(
                    "request to model '{model}': cannot allocate {bytes} bytes of token ids"
                ))
            })?;
            Ok(v)
        };
        let (mut ids, mut mask, mut types) = (reserve()?, reserve()?, reserve()?);
        let push = |out: &mut Vec<u8>, v: i64| out.extend_from_slice(&v.to_le_bytes());
        for e in &encodings {
            for (&id, &ty) in e.get_ids().iter().zip(e.get_type_ids()) {
                push(&mut ids, id as i64);
                push(&mut mask, 1);
                push(&mut types, ty as i64);
            }
            for _ in e.len()..width {
                push(&mut ids, spec.pad_id);
                push(&mut mask, 0);
                push(&mut types, spec.pad_type_id);
            }
        }
        let tensor = |name: &str, data: Vec<u8>| {
            Tensor::new(name, DataType::Int64, vec![rows as i64, width as i64], data)
                .map_err(|e| Error::internal(e.message))
        };
        let mut out = vec![tensor(INPUT_IDS, ids)?, tensor(ATTENTION_MASK, mask)?];
        if spec.token_type_ids {
            out.push(tensor(TOKEN_TYPE_IDS, types)?);
        }
        Ok(Encoded {
            inputs: out,
            seq_len: width,
            real_tokens: encodings.iter().map(|e| e.len()).sum(),
        })
    }

    /// Encodes the first `max_length` tokens' worth of `text` without tokenizing all of it:
    /// prefixes of 8 × `max_length` bytes, then twice as many each time, until one holds more
    /// than `max_length` tokens or the prefix is the whole text. The work is then a small
    /// multiple of the bytes that make `max_length` tokens, not of the text's length (a 1 MiB
    /// text cut to 256 tokens used to cost seconds of tokenizer time).
    ///
    /// A prefix ends after a whitespace character when there is one in its second half (else
    /// at a char boundary): tokenizers split words at whitespace, so the tokens of such a
    /// prefix are the first tokens of the whole text, and a prefix that overflows yields the
    /// same `max_length` tokens the whole text would. With truncation on, the tokenizer keeps
    /// `max_length` tokens (special ones included) and reports the rest as overflow.
    fn encode_text(&self, text: &str) -> tokenizers::Result<TextEncoding> {
        let max = self.spec.max_length;
        let mut take = max.saturating_mul(8).max(1);
        loop {
            let end = prefix_end(text, take);
            let encoding = self.tokenizer.encode_fast(&text[..end], true)?;
            let overflow: usize = encoding.get_overflowing().iter().map(|o| o.len()).sum();
            let tokens = encoding.len().saturating_add(overflow);
            if tokens > max || end == text.len() {
                return Ok(TextEncoding {
                    encoding,
                    tokens,
                    prefix: end,
                });
            }
            take = take.saturating_mul(2);
        }
    }

    pub fn spec(&self) -> &TextSpec {
        &self.spec
    }
}

/// Where a prefix of about `take` bytes of `text` ends: the whole text if it is no longer,
/// else after the last whitespace in the prefix's second half, else at the char boundary at or
/// before `take`. Never empty for a non-empty text, always a char boundary.
pub(crate) fn prefix_end(text: &str, take: usize) -> usize {
    if take >= text.len() {
        return text.len();
    }
    let mut end = take.max(1);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end == 0 {
        // `take` fell inside the first character: take that character whole.
        end = text.chars().next().map_or(0, char::len_utf8);
    }
    match text[..end].rfind(char::is_whitespace) {
        Some(ws) if ws >= end / 2 => {
            let after = ws + text[ws..].chars().next().map_or(1, char::len_utf8);
            after.min(end)
        }
        _ => end,
    }
}

/// A text's encoding and what it was counted from.
struct TextEncoding {
    /// The first tokens (all of them, or `max_length` when truncating).
    encoding: tokenizers::Encoding,
    /// Tokens counted in the prefix, truncated ones included: more than `max_length` means the
    /// text has more.
    tokens: usize,
    /// Bytes of the text encoded.
    prefix: usize,
}

/// One request's texts as token inputs.
pub struct Encoded {
    /// INT64 `[rows, seq_len]` each.
    pub inputs: Vec<Tensor>,
    pub seq_len: usize,
    /// Tokens that are not padding.
    pub real_tokens: usize,
}

struct Job {
    req: ValidRequest,
    reply: oneshot::Sender<Result<ValidRequest>>,
    /// Bytes expected to be tokenized (`admission::cost_bytes`).
    bytes: u64,
    /// The job's share of the pool's backlog, released when the job is done or dropped.
    charge: Charge,
}

/// The tokenizer threads of one model version. Requests reach them over two bounded channels,
/// small requests first (`admission`).
pub struct TokenizerPool {
    small: Sender<Job>,
    large: Sender<Job>,
    load: Arc<TokenizerLoad>,
    threads: Vec<JoinHandle<()>>,
    model: String,
    max_length: usize,
}

impl TokenizerPool {
    /// Starts the threads (`TextSpec::threads`, or a quarter of the cores, 1 to 4), each with its
    /// own handle on the encoder; at most `capacity` requests wait for them.
    pub fn start(encoder: &Encoder, capacity: usize) -> Result<TokenizerPool> {
        let n = match encoder.spec.threads {
            0 => std::thread::available_parallelism()
                .map_or(1, |c| c.get() / 4)
                .clamp(1, 4),
            n => n,
        };
        let (small, small_rx) = crossbeam_channel::bounded::<Job>(capacity.max(1));
        let (large, large_rx) = crossbeam_channel::bounded::<Job>(capacity.max(1));
        let load = Arc::new(TokenizerLoad::new(n));
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let enc = encoder.clone();
            let (small_rx, large_rx, load) = (small_rx.clone(), large_rx.clone(), load.clone());
            let name = format!("tok{i}:{}", encoder.model);
            let handle = std::thread::Builder::new()
                .name(name.chars().take(15).collect())
                .spawn(move || {
                    while let Some(Job {
                        req,
                        reply,
                        bytes,
                        charge,
                    }) = admission::next_job(&small_rx, &large_rx)
                    {
                        if reply.is_closed() {
                            continue; // the caller went away while the request waited
                        }
                        let id = req.id().to_string();
                        #[allow(
                            clippy::disallowed_types,
                            reason = "a tokenizer thread times its own work in real time"
                        )]
                        let started = std::time::Instant::now();
                        let result =
                            std::panic::catch_unwind(AssertUnwindSafe(|| enc.encode_request(req)))
                                .unwrap_or_else(|_| {
                                    Err(Error::internal(format!(
                                        "the tokenizer of model '{}' panicked on this request",
                                        enc.model
                                    ))
                                    .with_request_id(&id))
                                });
                        load.record(bytes, started.elapsed());
                        drop(charge); // done: out of the backlog before the next estimate
                        let _ = reply.send(result);
                    }
                })
                .map_err(|e| {
                    Error::internal(format!("failed to start tokenizer thread '{name}': {e}"))
                })?;
            threads.push(handle);
        }
        Ok(TokenizerPool {
            small,
            large,
            load,
            threads,
            model: encoder.model.clone(),
            max_length: encoder.spec.max_length,
        })
    }

    /// Tokenizes one request on a pool thread. Dropping the future abandons it. A request
    /// whose client deadline falls before the tokenizer could be done with it is refused now
    /// (`DeadlineUnmeetable`, as the scheduler refuses one its queue cannot drain in time).
    pub async fn tokenize(&self, req: ValidRequest) -> Result<ValidRequest> {
        let id = req.id().to_string();
        let lens = req
            .inputs()
            .iter()
            .filter(|t| t.dtype() == DataType::Bytes)
            .filter_map(|t| bytes_codec::decode(t.data(), t.element_count()).ok())
            .flat_map(|elements| elements.into_iter().map(<[u8]>::len));
        let bytes = admission::cost_bytes(lens, self.max_length);
        let wait = self.load.estimate(bytes);
        if let Some(deadline) = req.context().deadline() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if wait > left {
                return Err(Error::rejected(
                    Rejection::DeadlineUnmeetable,
                    wait.clamp(Duration::from_millis(1), Duration::from_secs(30)),
                    format!(
                        "Request deadline cannot be met: {} ms left, the tokenizer of model '{}' needs about {} ms to reach it",
                        left.as_millis(),
                        self.model,
                        wait.as_millis()
                    ),
                )
                .with_request_id(&id));
            }
        }
        let (reply, rx) = oneshot::channel();
        let job = Job {
            req,
            reply,
            bytes,
            charge: self.load.charge(self.load.cost(bytes)),
        };
        let lane = if admission::is_small(bytes, self.max_length) {
            &self.small
        } else {
            &self.large
        };
        match lane.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(Error::unavailable(format!(
                    "Exceeds maximum queue size: the tokenizer queue of model '{}' is full",
                    self.model
                ))
                .with_request_id(&id));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(Error::unavailable(format!(
                    "the tokenizer of model '{}' has stopped",
                    self.model
                )));
            }
        }
        rx.await.map_err(|_| {
            Error::internal("the tokenizer thread dropped the request without replying")
                .with_request_id(&id)
        })?
    }

    /// Closes the queue and waits for the threads. Blocking: call it off the async workers.
    pub fn shutdown(self) {
        let TokenizerPool {
            small,
            large,
            threads,
            ..
        } = self;
        drop((small, large));
        for t in threads {
            if t.join().is_err() {
                tracing::error!("tokenizer thread panicked");
            }
        }
    }
}
