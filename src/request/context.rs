//! What travels with one request from the front-end that received it to its queue entry.

use std::time::Duration;

use tokio::time::Instant;
use tracing::Span;

/// Which front-end received a request (the `protocol` attribute of its span).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    Http,
    /// A caller inside the process (tests, benchmarks) that goes through no front-end.
    Internal,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Http => "http",
            Protocol::Internal => "core",
        }
    }
}

/// The client's W3C trace context (`traceparent`, `tracestate`) as it arrived, in gRPC
/// metadata or HTTP headers alike. Not checked here: `Core::open_request` parses it and
/// ignores a context that is not valid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// Picks the two headers out of `(name, value)` pairs, names compared case-insensitively.
    pub fn from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut cx = TraceContext::default();
        for (k, v) in headers {
            if k.eq_ignore_ascii_case("traceparent") {
                cx.traceparent = Some(v.to_string());
            } else if k.eq_ignore_ascii_case("tracestate") {
                cx.tracestate = Some(v.to_string());
            }
        }
        cx
    }
}

/// What a front-end knows of a request as it arrives, before it decodes the request: the
/// input of `Core::open_request`.
#[derive(Debug, Clone)]
pub struct Origin {
    pub protocol: Protocol,
    /// When the request arrived: the start of its end-to-end and refusal durations.
    pub arrival: Instant,
    /// The client's own deadline (`grpc-timeout`, `Request-Timeout-Ms`): past it the answer is
    /// of no use, so the request may not wait beyond it.
    pub deadline: Option<Instant>,
    pub trace: TraceContext,
}

impl Origin {
    /// A request arriving now, without deadline or trace context.
    pub fn now(protocol: Protocol) -> Self {
        Origin {
            protocol,
            arrival: Instant::now(),
            deadline: None,
            trace: TraceContext::default(),
        }
    }
}

/// Where a request waits in its model's queue, resolved against the model's queue policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Schedule {
    /// Priority level, 0-based (0 = the highest); 0 without dynamic batching.
    pub level: usize,
    /// How long the request may wait in the queue; `None` = no limit.
    pub queue_timeout: Option<Duration>,
}

impl Schedule {
    /// The schedule of a request that must be answered by `deadline`: its queue timeout is
    /// no longer than what is left at `now` (at least 1 µs, so an expired deadline still
    /// times out rather than meaning "no limit").
    pub fn within(self, deadline: Option<Instant>, now: Instant) -> Schedule {
        let Some(deadline) = deadline else {
            return self;
        };
        let left = deadline
            .saturating_duration_since(now)
            .max(Duration::from_micros(1));
        Schedule {
            queue_timeout: Some(self.queue_timeout.map_or(left, |t| t.min(left))),
            ..self
        }
    }
}

/// One request's identity, timing and trace span. A front-end gets it from
/// `Core::open_request` before decoding the request; `validate` moves it into the
/// `ValidRequest` with the request's id and schedule, and the request carries it through
/// tokenization into its queue entry. Not `Clone`: one request, one context.
#[derive(Debug)]
pub struct RequestContext {
    id: String,
    arrival: Instant,
    deadline: Option<Instant>,
    span: Span,
    schedule: Schedule,
}

impl RequestContext {
    /// A context for a request that arrived at `arrival`; `span` is its request span
    /// (`Span::none()` when it is not traced). The id and schedule come with validation.
    pub fn new(arrival: Instant, deadline: Option<Instant>, span: Span) -> Self {
        RequestContext {
            id: String::new(),
            arrival,
            deadline,
            span,
            schedule: Schedule::default(),
        }
    }

    /// An untraced request arriving now without a deadline (tests, benchmarks).
    pub fn detached() -> Self {
        RequestContext::new(Instant::now(), None, Span::none())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn arrival(&self) -> Instant {
        self.arrival
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn span(&self) -> &Span {
        &self.span
    }

    pub fn schedule(&self) -> Schedule {
        self.schedule
    }

    /// `validate`'s step: the request's id and its schedule against the model.
    pub(crate) fn admit(&mut self, id: String, schedule: Schedule) {
        self.id = id;
        self.schedule = schedule;
    }

    /// Time spent before the queue (tokenization) comes out of what the client's deadline
    /// leaves for the queue; a queue policy's own timeout starts at the queue, as in Triton.
    pub(crate) fn charge_deadline(&mut self, now: Instant) {
        self.schedule = self.schedule.within(self.deadline, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_headers_are_found_whatever_their_case() {
        let cx = TraceContext::from_headers([
            ("content-type", "application/grpc"),
            ("TraceParent", "00-a-b-01"),
            ("tracestate", "k=v"),
        ]);
        assert_eq!(cx.traceparent.as_deref(), Some("00-a-b-01"));
        assert_eq!(cx.tracestate.as_deref(), Some("k=v"));
        assert_eq!(TraceContext::from_headers([]), TraceContext::default());
    }

    #[test]
    fn a_deadline_bounds_the_queue_timeout() {
        let now = Instant::now();
        let s = Schedule {
            level: 1,
            queue_timeout: Some(Duration::from_secs(5)),
        };
        assert_eq!(s.within(None, now), s);
        let soon = s.within(Some(now + Duration::from_secs(1)), now);
        assert_eq!(soon.queue_timeout, Some(Duration::from_secs(1)));
        assert_eq!(soon.level, 1);
        let late = Schedule::default().within(Some(now + Duration::from_secs(9)), now);
        assert_eq!(late.queue_timeout, Some(Duration::from_secs(9)));
        let past = s.within(Some(now), now + Duration::from_secs(1));
        assert_eq!(past.queue_timeout, Some(Duration::from_micros(1)));
    }
}
