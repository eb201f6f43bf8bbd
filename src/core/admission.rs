//! Admission: what a request goes through from the front-end to a model's queue (server
//! running, model serving, in-flight caps, validation, tokenization, the queue's own checks),
//! and the future that waits for its answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tracing::Span;

use super::Core;
use super::inflight::InflightGuard;
use crate::error::{Error, Rejection, Result};
use crate::lifecycle::manager::LoadedModel;
use crate::request::{InferRequest, InferResponse, Origin, RequestContext, RequestHead};
use crate::scheduler::Reply;
use crate::telemetry::spans;
use crate::telemetry::stats::ModelStats;
use crate::validate::validate;

/// How long a client refused because the model is not ready should wait.
const NOT_READY_RETRY: Duration = Duration::from_secs(1);

/// An accepted request waiting for its response. Dropping it cancels the request if it has not
/// started executing. Holding it keeps the model version loaded.
pub struct PendingInfer {
    stage: Stage,
    span: Span,
    _model: Arc<LoadedModel>,
    _inflight: InflightGuard,
}

/// Where an accepted request is: queued (waiting for its reply), or still being tokenized on
/// the tokenizer threads before it can be queued (text models).
enum Stage {
    Queued(Reply),
    Tokenizing(Pin<Box<dyn Future<Output = Result<Reply>> + Send>>),
}

impl Future for PendingInfer {
    type Output = Result<InferResponse>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let result = match &mut self.stage {
                Stage::Tokenizing(f) => match f.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(rx)) => {
                        self.stage = Stage::Queued(rx);
                        continue;
                    }
                    Poll::Ready(Err(e)) => Err(e),
                },
                Stage::Queued(rx) => match Pin::new(rx).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => r.unwrap_or_else(|_| {
                        Err(Error::internal(
                            "the model instance dropped the request without replying",
                        ))
                    }),
                },
            };
            if let Err(e) = &result {
                spans::record_error(&self.span, &e.message);
            }
            return Poll::Ready(result);
        }
    }
}

impl Core {
    /// Runs one request to completion: `submit`, then its answer. Dropping the future cancels
    /// it (the queued entry is skipped).
    pub async fn infer(&self, req: InferRequest, ctx: RequestContext) -> Result<InferResponse> {
        self.submit(req, ctx)?.await
    }

    /// The checks that need no tensors, in `submit`'s order: the server is not draining, the
    /// model resolves to a serving version (a known one that is loading is an overload-style
    /// "not ready" with a retry hint), and the server-wide in-flight caps hold `bytes` more.
    /// A refusal by the caps is counted against the model (`count_refusal`).
    /// `home` is the version a continuation's sequence still runs on after a reload
    /// (`ModelManager::sequence_home`); it replaces the lookup.
    fn admit_head(
        &self,
        model_name: &str,
        model_version: &str,
        bytes: usize,
        arrival: Instant,
        home: Option<Arc<LoadedModel>>,
    ) -> Result<(Arc<LoadedModel>, InflightGuard)> {
        self.check_running()?;
        let inflight = self.inflight.admit(&self.limits, bytes);
        let model = match home {
            Some(m) => Ok(m),
            None => self.manager.get(model_name, model_version),
        }
        .map_err(|lookup| {
            // Known but not serving (loading, unloading): worth retrying shortly.
            let retry = lookup.not_ready();
            let e = Error::from(lookup);
            if retry {
                e.refused(Rejection::ModelNotReady, Some(NOT_READY_RETRY))
            } else {
                e
            }
        });
        match (inflight, model) {
            (Ok(g), Ok(m)) => Ok((m, g)),
            (Err(e), Ok(m)) => {
                count_refusal(&m.stats, arrival, &e);
                Err(e)
            }
            (Err(e), Err(_)) | (Ok(_), Err(e)) => Err(e),
        }
    }

    /// Refuses a request from its head alone (model, version, id, parameters) and its origin
    /// (arrival, the client's deadline), while its tensors are still arriving: when it would be
    /// refused for overload (draining, model not ready, server busy, queue full, shed by
    /// priority, deadline that cannot be met) the refusal comes now, counted as `submit`
    /// counts it, and traced as `submit` would trace it. Anything else, including a head
    /// `submit` would reject as invalid, is Ok: the request is opened and decided with the
    /// whole of it. The in-flight byte cap is left to `submit` (the tensors' size is not known
    /// yet).
    pub fn refuse_early(&self, head: &RequestHead<'_>, origin: &Origin) -> Result<()> {
        self.early_refusal(head, origin).inspect_err(|e| {
            // Sampled only when refused: a request that goes on is sampled when opened.
            let ctx = self.open_request(origin.clone(), head.model_name, head.model_version);
            spans::record_id(ctx.span(), head.id);
            spans::record_error(ctx.span(), &e.message);
        })
    }

    fn early_refusal(&self, head: &RequestHead<'_>, origin: &Origin) -> Result<()> {
        let overload = |e: Error| {
            if e.retry_hint().is_some() {
                Err(e)
            } else {
                Ok(())
            }
        };
        let arrival = origin.arrival;
        // A continuation of a sequence that a reload left on the old version (or ended) is
        // decided by `submit`, with the whole request.
        if !matches!(
            self.manager
                .sequence_home(head.model_name, &head.params.sequence),
            Ok(None)
        ) {
            return Ok(());
        }
        let model = match self.admit_head(head.model_name, head.model_version, 0, arrival, None) {
            Ok((m, _inflight)) => m,
            Err(e) => return overload(e),
        };
        let Ok(schedule) = crate::validate::schedule(&model.spec, &head.params, origin.deadline)
        else {
            return Ok(());
        };
        model
            .scheduler
            .precheck(schedule.level, schedule.queue_timeout, head.id)
            .inspect_err(|e| count_refusal(&model.stats, arrival, e))
            .or_else(overload)
    }

    /// Counts a refusal met before the request could be read whole (the in-flight byte cap
    /// refused its compressed message while it was being expanded) against the model its head
    /// names, when that model is serving: as `submit` counts the same refusal of a request
    /// that came uncompressed. `e` is that refusal.
    pub fn count_unread_refusal(
        &self,
        model_name: &str,
        model_version: &str,
        arrival: Instant,
        e: &Error,
    ) {
        if let Ok(model) = self.manager.get(model_name, model_version) {
            count_refusal(&model.stats, arrival, e);
        }
    }

    /// Validates and queues one request at once; errors here mean it was never accepted (the
    /// model did not run). `ctx` is the request's, from `open_request`. The returned future
    /// resolves with the model's answer.
    pub fn submit(&self, req: InferRequest, ctx: RequestContext) -> Result<PendingInfer> {
        let span = ctx.span().clone();
        let arrival = ctx.arrival();
        spans::record_id(&span, &req.id);
        let accepted = self
            .manager
            .sequence_home(&req.model_name, &req.params.sequence)
            .and_then(|home| {
                let bytes = req.inputs.iter().map(|i| i.data.len()).sum();
                self.admit_head(&req.model_name, &req.model_version, bytes, arrival, home)
            })
            .and_then(|(model, inflight)| {
                span.record("model_version", model.spec.version);
                let valid = validate(req, ctx, &model.spec)
                    .map_err(|e| e.refused(Rejection::Invalid, None))
                    .inspect_err(|e| count_refusal(&model.stats, arrival, e))?;
                // Step 4: a text model's texts become token inputs on the tokenizer threads before
                // they are queued; other models are queued now, so a full queue is refused at once.
                let stage = if model.tokenizer.is_some() {
                    let m = model.clone();
                    Stage::Tokenizing(Box::pin(async move {
                        let pool = m.tokenizer.as_ref().expect("checked above");
                        // Refused by the tokenizer's own admission (a deadline it cannot meet) or
                        // by the queue once tokenized: counted as the pending request completes.
                        let queued = pool.tokenize(valid).await;
                        queued
                            .and_then(|valid| m.scheduler.enqueue(valid))
                            .inspect_err(|e| count_refusal(&m.stats, arrival, e))
                    }))
                } else {
                    let queued = model.scheduler.enqueue(valid);
                    Stage::Queued(queued.inspect_err(|e| count_refusal(&model.stats, arrival, e))?)
                };
                Ok(PendingInfer {
                    stage,
                    span: span.clone(),
                    _model: model,
                    _inflight: inflight,
                })
            });
        if let Err(e) = &accepted {
            spans::record_error(&span, &e.message);
        }
        accepted
    }
}

/// The one place a refusal is counted, whichever layer refused: `e`'s reason in the model's
/// rejection counter, with the time since `arrival` (the request's, or its head's). Errors that
/// are not refusals pass uncounted. Each refused request reaches this exactly once: where
/// `admit_head`, `refuse_early` or `submit` return its refusal, or, for a request refused after
/// tokenization began, where its pending future completes.
fn count_refusal(stats: &ModelStats, arrival: Instant, e: &Error) {
    if let Some(why) = e.refusal_reason() {
        stats.refused(why, arrival.elapsed());
    }
}
