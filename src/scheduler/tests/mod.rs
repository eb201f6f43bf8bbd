//! The scheduler task around the planner, with a fake backend and (where timing matters)
//! paused tokio time. No test waits on the clock: the fake instances' gates hold executions
//! for as long as a test needs, and the tests wait on what the fake log and the statistics
//! show.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::load::LoadTracker;
use super::{BatcherThread, ExecContext, QueueLimits, Reply, Scheduler};
use crate::backend::instance::{InstanceThread, Recovery};
use crate::backend::testing::{Activity, FakeLog, FakeRunner, Gate};
use crate::error::{Code, Rejection, Result};
use crate::model::{DynamicBatching, IoSpec, ModelSpec, OrtOptions, QueuePolicy, TimeoutAction};
use crate::request::{InferRequest, InferResponse, InputTensor, RequestContext, RequestParams};
use crate::telemetry::stats::ModelStats;
use crate::tensor::DataType;
use crate::validate::validate;

mod overload;

fn policy(max_queue_size: usize, timeout_ms: u64, action: TimeoutAction) -> QueuePolicy {
    QueuePolicy {
        max_queue_size,
        default_timeout: Duration::from_millis(timeout_ms),
        timeout_action: action,
        allow_timeout_override: true,
    }
}

fn batching(delay_ms: u64, levels: usize, p: QueuePolicy) -> DynamicBatching {
    DynamicBatching {
        preferred_batch_sizes: vec![],
        max_queue_delay: Duration::from_millis(delay_ms),
        preserve_ordering: false,
        priority_levels: levels,
        default_priority_level: levels,
        queue_policies: vec![p; levels],
        priorities_enabled: levels > 1,
    }
}

fn spec(db: Option<DynamicBatching>) -> ModelSpec {
    let io = |name: &str| IoSpec {
        name: name.into(),
        dtype: DataType::Int32,
        dims: vec![2],
        reshape: None,
        optional: false,
        labels: None,
    };
    ModelSpec {
        name: "fake".into(),
        version: 1,
        max_batch_size: 8,
        inputs: vec![io("IN")],
        outputs: vec![io("OUT")],
        model_path: "none".into(),
        instances: vec![],
        ort: OrtOptions::default(),
        dynamic_batching: db,
        text: None,
        sequence: None,
    }
}

struct Harness {
    scheduler: Scheduler,
    spec: Arc<ModelSpec>,
    log: Arc<FakeLog>,
    /// Every execution waits here while it is closed.
    gate: Gate,
    /// A batch whose first value is `HELD` also waits here while it is closed.
    hold: Gate,
    stats: Arc<ModelStats>,
    load: Arc<LoadTracker>,
    _alive: Arc<dyn Send + Sync>,
    _threads: Vec<InstanceThread>,
}

fn start(db: Option<DynamicBatching>, instances: usize, work_ms: u64) -> Harness {
    start_with(
        db,
        instances,
        work_ms,
        QueueLimits {
            capacity: 64,
            priority_reserve: 0.2,
            ..Default::default()
        },
        &[],
    )
}

/// `failing` lists instances whose first runner always fails (their rebuilt runner works).
fn start_with(
    db: Option<DynamicBatching>,
    instances: usize,
    work_ms: u64,
    limits: QueueLimits,
    failing: &[usize],
) -> Harness {
    // Paused-time tests run on a current-thread runtime, whose clock only its own tasks see.
    let thread = match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => BatcherThread::on_current_runtime(),
        _ => BatcherThread::start().unwrap(),
    };
    start_on(db, instances, work_ms, limits, failing, thread)
}

fn start_on(
    db: Option<DynamicBatching>,
    instances: usize,
    work_ms: u64,
    limits: QueueLimits,
    failing: &[usize],
    thread: Arc<BatcherThread>,
) -> Harness {
    let levels = db.as_ref().map_or(1, |d| d.priority_levels);
    let spec = Arc::new(spec(db));
    let stats = Arc::new(ModelStats::default());
    let log = Arc::new(FakeLog::default());
    let (gate, hold) = (Gate::default(), Gate::default());
    let load = Arc::new(LoadTracker::new(instances, levels));
    let ctx = Arc::new(ExecContext {
        spec: spec.clone(),
        stats: stats.clone(),
        load: load.clone(),
    });
    let (scheduler, rx) = Scheduler::start(ctx.clone(), instances, limits, thread);
    let alive: Arc<dyn Send + Sync> = ctx;
    let threads = (0..instances)
        .map(|i| {
            let fake = |fail: bool| FakeRunner {
                log: log.clone(),
                work: Duration::from_millis(work_ms),
                fail: fail.then(|| "onnx runtime error: broken instance".to_string()),
                slow_value: Some(0),
                gate: gate.clone(),
                hold: Some((HELD, hold.clone())),
                ..Default::default()
            };
            let runner = fake(failing.contains(&i));
            let healthy = load.clone();
            let rebuilt = fake(false);
            let mut rebuilt = Some(rebuilt);
            let recovery = Recovery {
                threshold: 3,
                rebuild: Box::new(move || {
                    Ok(Box::new(rebuilt.take().expect("rebuilt once"))
                        as Box<dyn crate::backend::Runner>)
                }),
                on_change: Box::new(move |up| {
                    if up {
                        healthy
                            .healthy
                            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    } else {
                        healthy
                            .healthy
                            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }),
                alive: Arc::downgrade(&alive),
            };
            InstanceThread::spawn(
                format!("fake{i}"),
                Box::new(runner),
                rx.clone(),
                Some(recovery),
            )
            .unwrap()
        })
        .collect();
    Harness {
        scheduler,
        spec,
        log,
        gate,
        hold,
        stats,
        load,
        _alive: alive,
        _threads: threads,
    }
}

/// A failing test must fail, not hang: the instance threads are joined when the harness drops,
/// so nothing may still wait at a gate then.
impl Drop for Harness {
    fn drop(&mut self) {
        self.gate.open();
        self.hold.open();
    }
}

/// The first value of a batch that waits at `Harness::hold`.
const HELD: i32 = -1;

/// The overall bound of a wait on observable state: it only turns a hang into a failure.
const WAIT_LIMIT: Duration = Duration::from_secs(120);

impl Harness {
    /// Waits until the fake instances' activity satisfies `done`. On a paused clock (the
    /// current-thread tests) there is no safety net: the clock would jump to it as soon as the
    /// runtime waits for an instance thread.
    async fn wait(&self, what: &str, done: impl FnMut(&Activity) -> bool) -> Activity {
        let paused = matches!(
            tokio::runtime::Handle::current().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::CurrentThread
        );
        if paused {
            return self.log.wait_until(done).await;
        }
        match tokio::time::timeout(WAIT_LIMIT, self.log.wait_until(done)).await {
            Ok(a) => a,
            Err(_) => panic!("never happened: {what}; {:?}", self.log.activity()),
        }
    }

    /// Closes the gate and sends a request of `rows` rows at `priority` (0 = the default) that
    /// an instance takes and holds there: returns its reply once it is executing.
    async fn occupy(&self, value: i32, rows: usize, priority: u64) -> Reply {
        self.gate.close();
        let running = self.log.activity().running;
        let params = RequestParams {
            priority,
            ..Default::default()
        };
        let reply = self.send(value, rows, params).unwrap();
        self.wait("an instance holds the request", |a| a.running > running)
            .await;
        reply
    }

    /// Polls `done` (the statistics, say) until it holds.
    async fn eventually(&self, what: &str, mut done: impl FnMut() -> bool) {
        let poll = async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        if tokio::time::timeout(WAIT_LIMIT, poll).await.is_err() {
            panic!("never happened: {what}");
        }
    }

    /// Sends a request whose one input holds `value` in each of its `rows` × 2 elements.
    fn send(&self, value: i32, rows: usize, params: RequestParams) -> Result<Reply> {
        self.send_by(value, rows, params, None)
    }

    /// `send` for a client that must be answered by `deadline`.
    fn send_by(
        &self,
        value: i32,
        rows: usize,
        params: RequestParams,
        deadline: Option<Instant>,
    ) -> Result<Reply> {
        let data: Vec<u8> = (0..rows * 2).flat_map(|_| value.to_le_bytes()).collect();
        let req = InferRequest {
            model_name: "fake".into(),
            model_version: String::new(),
            id: format!("r{value}"),
            inputs: vec![InputTensor {
                name: "IN".into(),
                datatype: "INT32".into(),
                shape: vec![rows as i64, 2],
                data: Bytes::from(data),
            }],
            outputs: vec![],
            params,
        };
        let ctx = RequestContext::new(Instant::now(), deadline, tracing::Span::none());
        let valid = validate(req, ctx, &self.spec)?;
        self.scheduler.enqueue(valid)
    }
}

fn first_value(r: &InferResponse) -> i32 {
    i32::from_le_bytes(r.outputs[0].data()[..4].try_into().unwrap())
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_within_the_delay_share_executions() {
    // Paused time: the six requests arrive at one instant, well within the 50 ms delay.
    let h = start(
        Some(batching(50, 1, policy(0, 0, TimeoutAction::Reject))),
        1,
        0,
    );
    let replies: Vec<Reply> = (0..6)
        .map(|i| h.send(i, 1, Default::default()).unwrap())
        .collect();
    for (i, r) in replies.into_iter().enumerate() {
        let resp = r.await.unwrap().unwrap();
        assert_eq!(
            first_value(&resp),
            i as i32,
            "each request gets its own rows back"
        );
        assert_eq!(resp.outputs[0].shape(), vec![1, 2]);
    }
    let batches = h.log.batches();
    assert!(batches.len() < 6, "6 requests ran as {batches:?}");
    assert_eq!(batches.iter().sum::<usize>(), 6);
    let s = h.stats.snapshot();
    assert_eq!(
        (s.inference_count, s.execution_count as usize),
        (6, batches.len())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_dynamic_batching_every_request_runs_alone() {
    let h = start(None, 1, 1);
    let replies: Vec<Reply> = (0..4)
        .map(|i| h.send(i, 2, Default::default()).unwrap())
        .collect();
    for r in replies {
        r.await.unwrap().unwrap();
    }
    assert_eq!(h.log.batches(), vec![2, 2, 2, 2]);
}

/// A lone request reaches a free instance without the batcher task: on a batcher thread that
/// never runs its tasks, requests still complete one by one (each after the previous one freed
/// the instance) without dynamic batching and with a zero delay, but not with a delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_request_skips_the_batcher_when_an_instance_is_free() {
    let limits = QueueLimits::default();
    for db in [
        None,
        Some(batching(0, 1, policy(0, 0, TimeoutAction::Reject))),
    ] {
        let h = start_on(db, 1, 0, limits, &[], BatcherThread::stalled());
        for i in 0..3 {
            h.send(i, 1, Default::default())
                .unwrap()
                .await
                .unwrap()
                .unwrap();
            // The instance slot may come back just after the reply: wait for it.
            while h.scheduler.free_instances() == 0 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(h.log.batches(), vec![1, 1, 1]);
    }
    let h = start_on(
        Some(batching(1, 1, policy(0, 0, TimeoutAction::Reject))),
        1,
        0,
        limits,
        &[],
        BatcherThread::stalled(),
    );
    let _waits = h.send(0, 1, Default::default()).unwrap();
    assert_eq!(
        h.scheduler.queued(),
        1,
        "a delay waits in the batcher's queue"
    );
}

/// Without dynamic batching, requests wait in the instances' own channel (no batcher task: the
/// batcher thread here never runs its tasks): the queue is bounded, holds its places until an
/// instance takes a request, skips a request whose client went away, and runs in arrival order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_dynamic_batching_requests_queue_in_the_instances_channel() {
    let limits = QueueLimits {
        capacity: 3,
        ..Default::default()
    };
    let h = start_on(None, 1, 0, limits, &[], BatcherThread::stalled());
    let busy = h.occupy(0, 1, 0).await;
    let queued: Vec<Reply> = (1..=3)
        .map(|i| h.send(i, 1, Default::default()).unwrap())
        .collect();
    assert_eq!(h.scheduler.queued(), 3);
    let err = h.send(4, 1, Default::default()).unwrap_err();
    assert_eq!(err.code, Code::Unavailable);
    assert!(
        err.message.ends_with("Exceeds maximum queue size"),
        "{}",
        err.message
    );
    let mut queued = queued.into_iter();
    let first = queued.next().unwrap();
    drop(queued.next()); // request 2's client goes away while it waits
    let third = queued.next().unwrap();
    h.gate.open();
    busy.await.unwrap().unwrap();
    assert_eq!(first_value(&first.await.unwrap().unwrap()), 1);
    assert_eq!(first_value(&third.await.unwrap().unwrap()), 3);
    assert_eq!(h.log.batches(), vec![1, 1, 1], "request 2 never ran");
    assert_eq!(h.scheduler.queued(), 0);
    assert_eq!(h.stats.snapshot().fail.count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once_and_accepted_requests_complete() {
    // One slow instance; the first request occupies it, three more fit the queue of 3.
    let h = start(
        Some(batching(0, 1, policy(3, 0, TimeoutAction::Reject))),
        1,
        0,
    );
    let mut accepted = vec![h.occupy(0, 8, 0).await];
    let mut refused = 0;
    for i in 1..8 {
        match h.send(i, 8, Default::default()) {
            Ok(r) => accepted.push(r),
            Err(e) => {
                assert_eq!(e.code, Code::Unavailable);
                assert!(
                    e.message.ends_with("Exceeds maximum queue size"),
                    "{}",
                    e.message
                );
                refused += 1;
            }
        }
    }
    assert_eq!((accepted.len(), refused), (4, 4));
    h.gate.open();
    for r in accepted {
        r.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_overtakes_lower() {
    let h = start(
        Some(batching(0, 2, policy(0, 0, TimeoutAction::Reject))),
        1,
        0,
    );
    let busy = h.occupy(100, 8, 2).await;
    // Queued while the instance is busy: two low-priority full batches, then one high-priority.
    let low1 = h
        .send(
            1,
            8,
            RequestParams {
                priority: 2,
                ..Default::default()
            },
        )
        .unwrap();
    let low2 = h
        .send(
            2,
            8,
            RequestParams {
                priority: 2,
                ..Default::default()
            },
        )
        .unwrap();
    let high = h
        .send(
            3,
            8,
            RequestParams {
                priority: 1,
                ..Default::default()
            },
        )
        .unwrap();
    h.gate.open();
    busy.await.unwrap().unwrap();
    for r in [low1, low2, high] {
        r.await.unwrap().unwrap();
    }
    // The order the instance ran them in (the order replies are awaited in says nothing): the
    // held request, then the high-priority one, then the two low ones (together or not).
    let leaders = h.log.leaders.lock().clone();
    assert_eq!(leaders.get(..2), Some(&[100, 3][..]), "{leaders:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_timeout_answers_when_it_expires() {
    let h = start(
        Some(batching(0, 1, policy(0, 50, TimeoutAction::Reject))),
        1,
        0,
    );
    let busy = h.occupy(0, 8, 0).await;
    let waiting = h.send(1, 8, Default::default()).unwrap();
    let err = waiting.await.unwrap().unwrap_err();
    assert_eq!(err.code, Code::Unavailable);
    assert!(
        err.message.ends_with("Request timeout expired"),
        "{}",
        err.message
    );
    // Answered at its deadline, not when the busy instance frees up: that one is still held.
    assert_eq!(
        h.log.activity().finished,
        0,
        "answered while the instance is still busy"
    );
    h.gate.open();
    busy.await.unwrap().unwrap();
    assert_eq!(h.stats.snapshot().fail.count, 1);
}

#[tokio::test(start_paused = true)]
async fn delay_timeout_still_runs_after_the_others() {
    // Paused time: the 40 ms sleep passes the 20 ms timeout exactly, whatever the machine.
    let h = start(
        Some(batching(0, 1, policy(0, 20, TimeoutAction::Delay))),
        1,
        0,
    );
    let busy = h.occupy(0, 8, 0).await;
    let delayed = h.send(1, 8, Default::default()).unwrap();
    tokio::time::sleep(Duration::from_millis(40)).await; // its timeout passes while queued
    let fresh = h
        .send(
            2,
            8,
            RequestParams {
                timeout_us: 1_000_000,
                ..Default::default()
            },
        )
        .unwrap();
    h.gate.open();
    busy.await.unwrap().unwrap();
    let (d, f) = (
        delayed.await.unwrap().unwrap(),
        fresh.await.unwrap().unwrap(),
    );
    assert_eq!((first_value(&d), first_value(&f)), (1, 2));
    assert_eq!(h.log.batches(), vec![8, 8, 8]);
    assert_eq!(h.stats.snapshot().fail.count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_run_two_batches_at_once() {
    let h = start(
        Some(batching(0, 1, policy(0, 0, TimeoutAction::Reject))),
        2,
        0,
    );
    h.gate.close();
    let a = h.send(1, 8, Default::default()).unwrap();
    let b = h.send(2, 8, Default::default()).unwrap();
    h.wait("both instances hold a batch", |a| a.running == 2)
        .await;
    h.gate.open();
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    assert_eq!(
        h.log
            .max_concurrent
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_request_never_runs_and_is_counted() {
    let h = start(
        Some(batching(0, 1, policy(0, 0, TimeoutAction::Reject))),
        1,
        0,
    );
    let busy = h.occupy(0, 8, 0).await;
    drop(h.send(1, 8, Default::default()).unwrap()); // the client goes away while queued
    h.gate.open();
    busy.await.unwrap().unwrap();
    // The batcher finds it cancelled once the instance frees up.
    h.eventually("the cancelled request is counted", || {
        h.stats.snapshot().fail.count == 1
    })
    .await;
    assert_eq!(h.log.batches(), vec![8]);
    assert_eq!(h.stats.snapshot().fail.count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preserve_ordering_releases_in_arrival_order() {
    // The first request is held on one instance while the second runs on the other.
    for preserve in [false, true] {
        let mut db = batching(0, 1, policy(0, 0, TimeoutAction::Reject));
        db.preserve_ordering = preserve;
        let h = start(Some(db), 2, 0);
        h.hold.close();
        let mut slow = h.send(HELD, 8, Default::default()).unwrap();
        h.wait("the first request is held", |a| a.running == 1)
            .await;
        let mut fast = h.send(1, 8, Default::default()).unwrap();
        h.wait("the second request has run", |a| a.finished == 1)
            .await;
        if preserve {
            // With ordering, the fast reply is held back until the slow one has been released.
            assert!(fast.try_recv().is_err(), "held back behind the first");
            h.hold.open();
        }
        let resp = match fast.try_recv() {
            Ok(r) => r,
            Err(_) => fast.await.unwrap(),
        };
        assert_eq!(first_value(&resp.unwrap()), 1);
        assert_eq!(
            slow.try_recv().is_ok(),
            preserve,
            "preserve_ordering = {preserve}"
        );
        if !preserve {
            h.hold.open();
            slow.await.unwrap().unwrap();
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_delay_is_honoured_in_paused_time() {
    let h = start(
        Some(batching(100, 1, policy(0, 0, TimeoutAction::Reject))),
        1,
        0,
    );
    let t0 = Instant::now();
    let a = h.send(1, 1, Default::default()).unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    let b = h.send(2, 1, Default::default()).unwrap();
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    // Both joined one batch released when the first had waited the 100 ms delay.
    assert_eq!(h.log.batches(), vec![2]);
    assert!(Instant::now() - t0 >= Duration::from_millis(100));
}

#[test]
fn a_reshape_that_does_not_fit_the_data_is_an_error_not_a_tensor() {
    // Load refuses such a config; this is the second line of defence on the run path.
    let mut s = spec(None);
    s.inputs[0].dims = vec![-1, 4];
    s.inputs[0].reshape = Some(vec![-1]);
    let t =
        crate::tensor::Tensor::new("IN", DataType::Int32, vec![1, 3, 4], vec![0u8; 48]).unwrap();
    let err = super::assembly::model_inputs(&s, vec![t.clone()]).unwrap_err();
    assert!(
        err.message
            .contains("cannot view shape [1,3,4] as [1,3]: the element counts differ"),
        "{err:?}"
    );
    s.inputs[0].reshape = Some(vec![-1, 2, 2]);
    let ok = super::assembly::model_inputs(&s, vec![t]).unwrap();
    assert_eq!(ok[0].shape(), [1, 3, 2, 2]);
}
