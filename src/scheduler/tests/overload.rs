//! Overload behaviour of the scheduler: rejections with their reasons and retry hints,
//! deadline admission, and faulty instances taken out and restored.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_name_their_reason_and_carry_a_retry_hint() {
    // Capacity 10, 2 levels, 50% reserved for level 1: level 2 may fill only 5.
    let limits = QueueLimits {
        capacity: 10,
        priority_reserve: 0.5,
        ..Default::default()
    };
    let h = start_with(
        Some(batching(0, 2, policy(0, 0, TimeoutAction::Reject))),
        1,
        100,
        limits,
        &[],
    );
    let busy = h
        .send(
            100,
            8,
            RequestParams {
                priority: 2,
                ..Default::default()
            },
        )
        .unwrap();
    busy.await.unwrap().unwrap(); // one execution: the drain rate is known (≥ 100 ms)
    let blocker = h.occupy(100, 8, 2).await;
    let mut low = Vec::new();
    for i in 0..5 {
        low.push(
            h.send(
                i,
                8,
                RequestParams {
                    priority: 2,
                    ..Default::default()
                },
            )
            .unwrap(),
        );
    }
    let err = h
        .send(
            9,
            8,
            RequestParams {
                priority: 2,
                ..Default::default()
            },
        )
        .unwrap_err();
    let (why, retry) = err.retry_hint().expect("a rejection");
    assert_eq!(
        (err.code, why),
        (Code::Unavailable, Rejection::ShedByPriority),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("Exceeds maximum queue size"),
        "{}",
        err.message
    );
    assert!(
        retry >= Duration::from_millis(100),
        "retry hint {retry:?} reflects ~5 queued × 100 ms"
    );
    // The highest level still gets in, up to the full capacity.
    let mut high = Vec::new();
    for i in 0..5 {
        high.push(
            h.send(
                10 + i,
                8,
                RequestParams {
                    priority: 1,
                    ..Default::default()
                },
            )
            .unwrap(),
        );
    }
    let err = h
        .send(
            20,
            8,
            RequestParams {
                priority: 1,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(err.refusal_reason().unwrap(), Rejection::QueueFull);
    // Refusals are returned, not counted: `Core` counts them, once.
    let text = crate::telemetry::metrics::render(
        h.stats.families(&Default::default()),
        None,
        &Default::default(),
    );
    let rejected: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(crate::telemetry::metrics::REJECTED))
        .collect();
    assert_eq!(rejected.len(), Rejection::ALL.len(), "{text}");
    assert!(rejected.iter().all(|l| l.ends_with(" 0")), "{text}");
    h.gate.open();
    blocker.await.unwrap().unwrap();
    for r in high.into_iter().chain(low) {
        r.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_cannot_be_met_is_refused_at_admission() {
    let h = start(
        Some(batching(0, 1, policy(0, 0, TimeoutAction::Reject))),
        1,
        100,
    );
    h.send(1, 8, Default::default())
        .unwrap()
        .await
        .unwrap()
        .unwrap(); // learn the drain rate
    // One held on the instance, two queued behind it: they cannot drain before the deadline.
    let mut queued = vec![h.occupy(1, 8, 0).await];
    queued.extend((0..2).map(|i| h.send(i + 2, 8, Default::default()).unwrap()));
    // `send` answers synchronously: a refusal comes at once, before anything is queued.
    let err = h
        .send_by(
            7,
            8,
            Default::default(),
            Some(Instant::now() + Duration::from_millis(50)),
        )
        .unwrap_err();
    assert_eq!(
        err.refusal_reason().unwrap(),
        Rejection::DeadlineUnmeetable,
        "{}",
        err.message
    );
    assert!(
        err.message.contains("deadline cannot be met"),
        "{}",
        err.message
    );
    // A deadline that can be met is accepted and answered.
    let ok = h
        .send_by(
            8,
            8,
            Default::default(),
            Some(Instant::now() + Duration::from_secs(5)),
        )
        .unwrap();
    h.gate.open();
    for r in queued {
        r.await.unwrap().unwrap();
    }
    ok.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_instance_is_taken_out_and_restored_while_the_model_serves() {
    // Instance 0 fails every run until rebuilt; instance 1 is fine. Without dynamic batching.
    let h = start_with(
        None,
        2,
        5,
        QueueLimits {
            capacity: 64,
            priority_reserve: 0.2,
            ..Default::default()
        },
        &[0],
    );
    // Requests go in pairs held at the gate until both instances run one, so the faulty
    // instance gets one of each pair (which instance takes a lone request is up to the
    // threads) until its breaker opens and it is rebuilt.
    let (mut ok, mut failed) = (0, 0);
    for pair in 0..20 {
        h.gate.close();
        let values = [2 * pair + 1, 2 * pair + 2];
        let replies = values.map(|v| h.send(v, 2, Default::default()).unwrap());
        h.wait("both instances hold a request", |a| a.running == 2)
            .await;
        h.gate.open();
        for (v, reply) in values.into_iter().zip(replies) {
            match reply.await.unwrap() {
                Ok(r) => {
                    assert_eq!(first_value(&r), v);
                    ok += 1;
                }
                Err(e) => {
                    assert!(e.message.contains("broken instance"), "{}", e.message);
                    failed += 1;
                }
            }
        }
    }
    // The breaker opens after 3 failures in a row: one per pair until then, none after.
    assert_eq!(failed, 3, "{failed} failed");
    assert_eq!(ok + failed, 40);
    assert_eq!(
        h.load.healthy.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the rebuilt instance is back"
    );
}
