//! The sequence table's decisions as plain function calls with explicit instants: routing,
//! slots handed out lowest first, the backlog, END forgetting an id, idle release, padding
//! rows and the oldest strategy's one-request-in-flight rule.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::*;
use crate::error::Result;
use crate::model::sequence::{SequenceSpec, Strategy};
use crate::model::{IoSpec, ModelSpec, OrtOptions};
use crate::request::{
    InferRequest, InferResponse, InputTensor, RequestContext, RequestParams, SequenceParams,
};
use crate::scheduler::reply::Replier;
use crate::tensor::DataType;
use crate::validate::validate;

const IDLE: Duration = Duration::from_millis(100);

fn spec() -> ModelSpec {
    let io = |name: &str| IoSpec {
        name: name.into(),
        dtype: DataType::Int32,
        dims: vec![1],
        reshape: None,
        optional: false,
        labels: None,
    };
    ModelSpec {
        name: "seq".into(),
        version: 1,
        max_batch_size: 4,
        inputs: vec![io("INPUT")],
        outputs: vec![io("OUTPUT")],
        model_path: "model.onnx".into(),
        instances: vec![],
        ort: OrtOptions::default(),
        dynamic_batching: None,
        text: None,
        sequence: Some(SequenceSpec {
            strategy: Strategy::Direct {
                max_queue_delay: Duration::ZERO,
                min_slot_utilization: 0.0,
            },
            idle: IDLE,
            controls: vec![],
            states: vec![],
        }),
    }
}

type Rx = oneshot::Receiver<Result<InferResponse>>;

/// A request of sequence `id` carrying `value`, and the receiver its answer goes to.
fn entry(id: u64, value: i32, start: bool, end: bool) -> (SeqEntry, Rx) {
    let sequence = SequenceParams {
        id: CorrelationId::Uint(id),
        start,
        end,
    };
    let req = InferRequest {
        model_name: "seq".into(),
        model_version: String::new(),
        id: format!("{id}-{value}"),
        inputs: vec![InputTensor {
            name: "INPUT".into(),
            datatype: "INT32".into(),
            shape: vec![1, 1],
            data: Bytes::copy_from_slice(&value.to_le_bytes()),
        }],
        outputs: vec![],
        params: RequestParams {
            sequence: sequence.clone(),
            ..Default::default()
        },
    };
    let req = validate(req, RequestContext::detached(), &spec()).expect("valid");
    let (tx, rx) = oneshot::channel();
    let e = Entry {
        req,
        reply: Replier::Direct(tx),
        enqueued: Instant::now(),
        deadline: None,
        delay_on_timeout: false,
        queue_span: tracing::Span::none(),
    };
    (
        SeqEntry {
            entry: e,
            id: sequence.id,
            start,
            end,
            row: RowState::default(),
        },
        rx,
    )
}

fn caps() -> Caps {
    Caps {
        per_sequence: 8,
        backlog: 2,
    }
}

/// The request ids of a formed batch (`-` for a padding row).
fn ids(form: Form) -> Vec<String> {
    match form {
        Form::Dispatch(rows) => rows
            .iter()
            .map(|r| {
                r.as_ref()
                    .map_or("-".into(), |e| e.entry.req.id().to_string())
            })
            .collect(),
        Form::WaitUntil(_) => vec!["wait".into()],
        Form::Idle => vec![],
    }
}

#[test]
fn slots_go_lowest_first_and_new_sequences_wait_in_the_backlog() {
    let now = Instant::now();
    let mut t = Table::new(2, 1, caps(), IDLE);
    let mut keep = Vec::new();
    for id in 1..=4 {
        let (e, rx) = entry(id, 0, true, false);
        keep.push(rx);
        assert!(t.route(e, now).is_ok(), "sequence {id}");
    }
    assert_eq!((t.active(), t.backlogged()), (2, 2));
    // Slot 0 of instance 0, then slot 0 of instance 1 (lowest slot index across instances).
    assert_eq!(ids(t.form_direct(0, now, 0.0, Duration::ZERO)), ["1-0"]);
    assert_eq!(ids(t.form_direct(1, now, 0.0, Duration::ZERO)), ["2-0"]);
    // A fifth sequence finds the backlog full; a continuation of an unknown id is E28.
    let (e, _rx5) = entry(5, 0, true, false);
    assert_eq!(t.route(e, now).err().map(|(r, _)| r), Some(Refused::Full));
    let (e, _rx6) = entry(6, 1, false, false);
    assert_eq!(
        t.route(e, now).err().map(|(r, _)| r),
        Some(Refused::NotStarted)
    );
    // Sequence 1 ends: its slot goes to the oldest backlog queue (sequence 3).
    t.finished(0, &[]);
    let (e, _rx) = entry(1, 1, false, true);
    assert!(t.route(e, now).is_ok());
    let (e, _rx1) = entry(1, 2, false, false);
    assert_eq!(
        t.route(e, now).err().map(|(r, _)| r),
        Some(Refused::NotStarted),
        "an END forgets its id at once"
    );
    assert_eq!(ids(t.form_direct(0, now, 0.0, Duration::ZERO)), ["1-1"]);
    assert_eq!(t.backlogged(), 1);
    t.finished(0, &[]);
    assert_eq!(ids(t.form_direct(0, now, 0.0, Duration::ZERO)), ["3-0"]);
}

#[test]
fn direct_pads_slots_without_a_request() {
    let now = Instant::now();
    let mut t = Table::new(1, 4, caps(), IDLE);
    let mut keep = Vec::new();
    for (id, start) in [(1, true), (2, true), (3, true)] {
        let (e, rx) = entry(id, 0, start, false);
        keep.push(rx);
        assert!(t.route(e, now).is_ok());
    }
    assert_eq!(
        ids(t.form_direct(0, now, 0.0, Duration::ZERO)),
        ["1-0", "2-0", "3-0"]
    );
    assert_eq!(
        ids(t.form_direct(0, now, 0.0, Duration::ZERO)),
        Vec::<String>::new(),
        "busy"
    );
    t.finished(0, &[]);
    let (e, _rx) = entry(3, 1, false, false);
    assert!(t.route(e, now).is_ok());
    assert_eq!(
        ids(t.form_direct(0, now, 0.0, Duration::ZERO)),
        ["-", "-", "3-1"]
    );
    // A second START for a running id stays in its slot.
    t.finished(0, &[]);
    let (e, _rx2) = entry(2, 5, true, false);
    assert!(t.route(e, now).is_ok());
    assert_eq!(
        ids(t.form_direct(0, now, 0.0, Duration::ZERO)),
        ["-", "2-5"]
    );
    // With a utilization target, a lone request waits for the delay.
    t.finished(0, &[]);
    let (e, _rx3) = entry(1, 9, false, false);
    assert!(t.route(e, now).is_ok());
    let delay = Duration::from_millis(5);
    assert_eq!(ids(t.form_direct(0, now, 0.5, delay)), ["wait"]);
    let later = Instant::now() + delay;
    assert_eq!(ids(t.form_direct(0, later, 0.5, delay)), ["1-9"]);
}

#[test]
fn an_idle_sequence_is_released_and_its_queue_cancelled() {
    let now = Instant::now();
    let mut t = Table::new(1, 1, caps(), IDLE);
    let (e, _rx1) = entry(1, 0, true, false);
    assert!(t.route(e, now).is_ok());
    let (e, _rx2) = entry(2, 0, true, false);
    assert!(t.route(e, now).is_ok());
    assert_eq!(t.next_expiry(), Some(now + IDLE));
    assert_eq!(t.expire_idle(now + IDLE - Duration::from_millis(1)), 0);
    assert_eq!(t.expire_idle(now + IDLE), 1);
    // The queued request of sequence 1 is cancelled; sequence 2 (backlogged, not timed out)
    // moves into the slot.
    assert_eq!(t.take_cancelled().len(), 1);
    assert_eq!((t.active(), t.backlogged()), (1, 0));
    let (e, _rx) = entry(1, 1, false, false);
    assert_eq!(
        t.route(e, now).err().map(|(r, _)| r),
        Some(Refused::NotStarted)
    );
    assert_eq!(
        ids(t.form_direct(0, now + IDLE, 0.0, Duration::ZERO)),
        ["2-0"]
    );
}

#[test]
fn oldest_runs_one_request_per_sequence_until_it_completes() {
    let now = Instant::now();
    let mut t = Table::new(1, 4, caps(), IDLE);
    let mut keep = Vec::new();
    for (id, v, start) in [(1, 0, true), (1, 1, false), (2, 0, true)] {
        let (e, rx) = entry(id, v, start, false);
        keep.push(rx);
        assert!(t.route(e, now).is_ok());
    }
    let (form, slots) = t.form_oldest(0, Instant::now(), 4, 4, Duration::ZERO);
    assert_eq!(ids(form), ["1-0", "2-0"]);
    t.finished(0, &slots);
    let (form, slots) = t.form_oldest(0, Instant::now(), 4, 4, Duration::ZERO);
    assert_eq!(ids(form), ["1-1"]);
    // Sequence 1 has a request in flight: its next one waits even on a free instance.
    t.finished(0, &[]);
    let (e, _rx) = entry(1, 2, false, false);
    assert!(t.route(e, now).is_ok());
    let (form, _) = t.form_oldest(0, Instant::now(), 4, 4, Duration::ZERO);
    assert!(ids(form).is_empty());
    t.finished(0, &slots);
    // Below the preferred size, a batch waits for the delay.
    let (form, _) = t.form_oldest(0, now, 4, 4, Duration::from_millis(10));
    assert_eq!(ids(form), ["wait"]);
}

#[test]
fn a_sequence_queue_has_a_cap() {
    let now = Instant::now();
    let mut t = Table::new(
        1,
        1,
        Caps {
            per_sequence: 2,
            backlog: 0,
        },
        IDLE,
    );
    let mut keep = Vec::new();
    for v in 0..2 {
        let (e, rx) = entry(1, v, v == 0, false);
        keep.push(rx);
        assert!(t.route(e, now).is_ok());
    }
    let (e, _rx) = entry(1, 2, false, false);
    assert_eq!(t.route(e, now).err().map(|(r, _)| r), Some(Refused::Full));
    let (e, _rx) = entry(2, 0, true, false);
    assert_eq!(
        t.route(e, now).err().map(|(r, _)| r),
        Some(Refused::Full),
        "no slot and no backlog"
    );
    assert_eq!(t.queued(), 2);
    assert_eq!(t.drain().len(), 2);
}

#[test]
fn a_backlogged_sequence_times_out_by_its_requests_timeout() {
    let now = Instant::now();
    let mut t = Table::new(1, 1, caps(), IDLE);
    let (e, _rx1) = entry(1, 0, true, false);
    assert!(t.route(e, now).is_ok());
    let (mut e, _rx2) = entry(2, 0, true, false);
    e.entry.deadline = Some(now + Duration::from_millis(5));
    assert!(t.route(e, now).is_ok());
    let (e, _rx3) = entry(2, 1, false, false);
    assert!(t.route(e, now).is_ok());
    assert_eq!(
        t.next_backlog_deadline(),
        Some(now + Duration::from_millis(5))
    );
    assert!(t.expire_backlog(now).is_empty());
    // Every request of the backlog queue goes, and the id with them.
    assert_eq!(t.expire_backlog(now + Duration::from_millis(5)).len(), 2);
    assert_eq!(t.backlogged(), 0);
    let (e, _rx4) = entry(2, 2, false, false);
    assert_eq!(
        t.route(e, now).err().map(|(r, _)| r),
        Some(Refused::NotStarted)
    );
    // A sequence that holds a slot is never timed out this way.
    assert_eq!(t.active(), 1);
}

/// The one row of a direct batch of `instance` 0 (panics on anything else).
fn only_row(form: Form) -> SeqEntry {
    match form {
        Form::Dispatch(rows) => rows.into_iter().flatten().next().expect("a real row"),
        _ => panic!("no batch"),
    }
}

#[test]
fn implicit_state_stays_with_the_slot_resets_on_start_and_ends_with_the_sequence() {
    let now = Instant::now();
    let mut t = Table::new(1, 1, caps(), IDLE);
    let state = |v: i32| {
        vec![
            crate::tensor::Tensor::new("S", DataType::Int32, vec![1, 1], v.to_le_bytes().to_vec())
                .unwrap(),
        ]
    };
    let value = |row: &SeqEntry| row.row.state.as_ref().map(|s| s[0].data()[0]);
    let mut keep = Vec::new();
    let mut step = |t: &mut Table, value_in: i32, start: bool, end: bool| {
        let (e, rx) = entry(1, value_in, start, end);
        keep.push(rx);
        assert!(t.route(e, now).is_ok());
        let row = only_row(t.form_direct(0, now, 0.0, Duration::ZERO));
        t.finished(0, &[]);
        row
    };
    // START runs with the initial state; what it produced is the next request's state.
    let first = step(&mut t, 0, true, false);
    assert_eq!(value(&first), None);
    let (sid, generation) = first.row.keep.expect("a START keeps its state");
    t.store_state(sid, generation, state(7));
    let second = step(&mut t, 1, false, false);
    assert_eq!(value(&second), Some(7));
    // A second START for the running id resets the state.
    let again = step(&mut t, 2, true, false);
    assert_eq!(value(&again), None);
    let (sid, generation) = again.row.keep.unwrap();
    t.store_state(sid, generation, state(9));
    // END runs with the state and keeps none; the slot's state is freed with it, and a
    // batch that ran for the ended sequence cannot store into the slot any more.
    let last = step(&mut t, 3, false, true);
    assert_eq!(value(&last), Some(9));
    assert!(last.row.keep.is_none());
    t.store_state(sid, generation, state(11));
    let next = step(&mut t, 4, true, false);
    assert_eq!(value(&next), None);
    let (_, fresh) = next.row.keep.unwrap();
    assert_ne!(fresh, generation);
    let cont = step(&mut t, 5, false, false);
    assert_eq!(value(&cont), None, "the stale store was ignored");
}
