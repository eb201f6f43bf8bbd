//! The dynamic batcher's decision, as a pure function of the queues and the time.
//!
//! Rules (Triton's dynamic batcher, behaviour.md §8.2): take requests in service order while
//! they can share a batch (same non-batch shapes) and fit in `max_batch_size`; run now when the
//! batch is full, cannot grow (the next request cannot join), has reached a preferred size, or
//! its oldest request has waited `max_queue_delay`; otherwise wait until that delay ends.
//! Token inputs (text models) also respect `max_batch_tokens`: rows × the longest row's tokens,
//! i.e. the padded tokens the batch will compute, so one long text cannot blow up a batch of
//! short ones; and `max_padding_ratio`: padded ÷ real tokens, so texts batch only with texts of
//! similar length where padding costs more than batching gains (CPUs).

use std::time::Duration;

use tokio::time::Instant;

use super::queue::{Pending, Queues};

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PlanConfig {
    pub max_batch_size: usize,
    /// Most requests in one batch (1 = Triton's default scheduler: each request alone).
    pub max_requests: usize,
    /// Ascending.
    pub preferred_batch_sizes: Vec<usize>,
    pub max_queue_delay: Duration,
    /// Most padded tokens in a batch of token inputs; `None` = no limit.
    pub max_batch_tokens: Option<usize>,
    /// Most padded tokens per real token in a batch of token inputs; `None` = no limit.
    pub max_padding_ratio: Option<f64>,
}

#[derive(Debug, PartialEq)]
pub(crate) enum Action<E> {
    /// Run these requests as one batch now.
    Dispatch(Vec<E>),
    /// Nothing to run yet; decide again at this time (or when something arrives).
    WaitUntil(Instant),
    /// Nothing queued.
    Idle,
}

/// Decides what to run at `now`, given that an instance is free. Dispatched requests are
/// removed from the queues. Timeouts must have been applied (`Queues::expire`) first.
pub(crate) fn plan<E: Pending>(
    queues: &mut Queues<E>,
    now: Instant,
    cfg: &PlanConfig,
) -> Action<E> {
    let mut iter = queues.iter();
    let Some(head) = iter.next() else {
        return Action::Idle;
    };
    let mut rows = head.rows();
    let mut count = 1;
    let mut oldest = head.enqueued();
    let mut can_grow = true;
    let mut seq_len = head.seq_len();
    let mut real = head.real_tokens();
    for e in iter {
        let longest = seq_len.max(e.seq_len());
        let padded = (rows + e.rows()) * longest.unwrap_or(0);
        let tokens_fit = longest.is_none()
            || (cfg.max_batch_tokens.is_none_or(|budget| padded <= budget)
                && cfg
                    .max_padding_ratio
                    .is_none_or(|r| padded as f64 <= r * (real + e.real_tokens()) as f64));
        if count >= cfg.max_requests
            || !head.batches_with(e)
            || rows + e.rows() > cfg.max_batch_size
            || !tokens_fit
        {
            can_grow = false;
            break;
        }
        seq_len = longest;
        real += e.real_tokens();
        rows += e.rows();
        count += 1;
        oldest = oldest.min(e.enqueued());
    }
    let waited_enough = now.saturating_duration_since(oldest) >= cfg.max_queue_delay;
    let run_now = rows >= cfg.max_batch_size
        || !can_grow
        || cfg.preferred_batch_sizes.contains(&rows)
        || waited_enough;
    if run_now {
        Action::Dispatch(queues.pop_front(count))
    } else {
        Action::WaitUntil(oldest + cfg.max_queue_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Req {
        id: u32,
        rows: usize,
        shape: i64,
        /// Token length (text requests batch whatever it is; `shape` is then ignored).
        tokens: Option<usize>,
        /// Real tokens (without padding).
        real: usize,
        at_us: u64,
        deadline_us: Option<u64>,
        level: usize,
        delay: bool,
    }

    fn t0() -> Instant {
        static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *T0.get_or_init(Instant::now)
    }

    fn at(us: u64) -> Instant {
        t0() + Duration::from_micros(us)
    }

    impl Pending for Req {
        fn rows(&self) -> usize {
            self.rows
        }
        fn batches_with(&self, other: &Self) -> bool {
            match (self.tokens, other.tokens) {
                (Some(_), Some(_)) => true,
                (None, None) => self.shape == other.shape,
                _ => false,
            }
        }
        fn seq_len(&self) -> Option<usize> {
            self.tokens
        }
        fn real_tokens(&self) -> usize {
            self.real
        }
        fn enqueued(&self) -> Instant {
            at(self.at_us)
        }
        fn deadline(&self) -> Option<Instant> {
            self.deadline_us.map(at)
        }
        fn level(&self) -> usize {
            self.level
        }
        fn delay_on_timeout(&self) -> bool {
            self.delay
        }
    }

    fn req(id: u32, rows: usize, at_us: u64) -> Req {
        Req {
            id,
            rows,
            shape: 16,
            tokens: None,
            real: 0,
            at_us,
            deadline_us: None,
            level: 0,
            delay: false,
        }
    }

    fn ids(a: &Action<Req>) -> Option<Vec<u32>> {
        match a {
            Action::Dispatch(v) => Some(v.iter().map(|r| r.id).collect()),
            _ => None,
        }
    }

    fn cfg(max: usize, preferred: &[usize], delay_us: u64) -> PlanConfig {
        PlanConfig {
            max_batch_size: max,
            max_requests: usize::MAX,
            preferred_batch_sizes: preferred.to_vec(),
            max_queue_delay: Duration::from_micros(delay_us),
            max_batch_tokens: None,
            max_padding_ratio: None,
        }
    }

    /// A text request of `rows` rows, each `tokens` long.
    fn text(id: u32, rows: usize, tokens: usize) -> Req {
        Req {
            tokens: Some(tokens),
            real: rows * tokens,
            ..req(id, rows, 0)
        }
    }

    #[test]
    fn padding_ratio_keeps_texts_of_very_different_lengths_apart() {
        let ratio = |r| PlanConfig {
            max_padding_ratio: Some(r),
            ..cfg(64, &[], 1000)
        };
        let plan_ids = |reqs: Vec<Req>, r: f64| {
            let mut q = Queues::new(1);
            for x in reqs {
                q.push(x);
            }
            ids(&plan(&mut q, at(0), &ratio(r)))
        };
        // 20 and 22 tokens: padded 44 / real 42 = 1.05 fits 1.25; then 60: 3 × 60 / 102 = 1.76.
        assert_eq!(
            plan_ids(vec![text(1, 1, 20), text(2, 1, 22), text(3, 1, 60)], 1.25),
            Some(vec![1, 2])
        );
        assert_eq!(
            plan_ids(vec![text(1, 1, 10), text(2, 1, 40)], 1.25),
            Some(vec![1]),
            "80 padded for 50 real"
        );
        assert_eq!(
            plan_ids(vec![text(1, 1, 10), text(2, 1, 40)], 2.0),
            None,
            "a looser ratio lets them wait together"
        );
    }

    #[test]
    fn token_budget_counts_padded_tokens() {
        let budget = |b| PlanConfig {
            max_batch_tokens: Some(b),
            ..cfg(64, &[], 1000)
        };
        // (name, queued, budget, expected dispatch or None = wait for more)
        type Case = (&'static str, Vec<Req>, usize, Option<Vec<u32>>);
        let cases: Vec<Case> = vec![
            (
                "different lengths batch together",
                vec![text(1, 1, 10), text(2, 2, 30), text(3, 1, 5)],
                1000,
                None,
            ),
            (
                "a long text that would pad the batch past the budget waits for the next one",
                vec![text(1, 2, 10), text(2, 1, 12), text(3, 1, 100)],
                120,
                Some(vec![1, 2]),
            ),
            (
                "rows times the longest row, not the sum of lengths",
                // 3 rows × 40 = 120 > 100 although 10 + 10 + 40 = 60 tokens are real.
                vec![text(1, 1, 10), text(2, 1, 10), text(3, 1, 40)],
                100,
                Some(vec![1, 2]),
            ),
            (
                "the head always runs, even past the budget",
                vec![text(1, 4, 100), text(2, 1, 1)],
                50,
                Some(vec![1]),
            ),
            (
                "text and non-text do not mix",
                vec![text(1, 1, 10), req(2, 1, 0)],
                1000,
                Some(vec![1]),
            ),
        ];
        for (name, reqs, b, want) in cases {
            let mut q = Queues::new(1);
            for r in reqs {
                q.push(r);
            }
            let got = plan(&mut q, at(0), &budget(b));
            assert_eq!(ids(&got), want, "{name}: {got:?}");
        }
        let mut q = Queues::new(1);
        q.push(text(1, 1, 10));
        q.push(text(2, 1, 50));
        let mut unlimited = budget(0);
        unlimited.max_batch_tokens = None;
        unlimited.max_queue_delay = Duration::ZERO;
        assert_eq!(ids(&plan(&mut q, at(0), &unlimited)), Some(vec![1, 2]));
    }

    #[test]
    fn decision_table() {
        // (name, queued requests, now µs, config, expected dispatch ids or None = wait)
        type Case = (&'static str, Vec<Req>, u64, PlanConfig, Option<Vec<u32>>);
        let cases: Vec<Case> = vec![
            (
                "no delay runs what is queued",
                vec![req(1, 1, 0), req(2, 1, 0)],
                0,
                cfg(8, &[], 0),
                Some(vec![1, 2]),
            ),
            (
                "waits for more within the delay",
                vec![req(1, 1, 0), req(2, 1, 10)],
                50,
                cfg(8, &[], 100),
                None,
            ),
            (
                "runs when the oldest waited the delay",
                vec![req(1, 1, 0), req(2, 1, 10)],
                100,
                cfg(8, &[], 100),
                Some(vec![1, 2]),
            ),
            (
                "a full batch runs at once",
                vec![req(1, 4, 0), req(2, 4, 0), req(3, 1, 0)],
                0,
                cfg(8, &[], 1000),
                Some(vec![1, 2]),
            ),
            (
                "a preferred size runs at once",
                vec![req(1, 2, 0), req(2, 2, 0)],
                0,
                cfg(8, &[4], 1000),
                Some(vec![1, 2]),
            ),
            (
                "not yet a preferred size",
                vec![req(1, 2, 0), req(2, 1, 0)],
                0,
                cfg(8, &[4], 1000),
                None,
            ),
            (
                "rows count toward the batch",
                vec![req(1, 6, 0), req(2, 3, 0)],
                0,
                cfg(8, &[], 1000),
                Some(vec![1]),
            ),
            (
                "different shapes do not batch",
                vec![
                    req(1, 1, 0),
                    Req {
                        shape: 8,
                        ..req(2, 1, 0)
                    },
                    req(3, 1, 0),
                ],
                0,
                cfg(8, &[], 1000),
                Some(vec![1]),
            ),
            (
                "higher priority goes first",
                vec![
                    Req {
                        level: 1,
                        ..req(1, 1, 0)
                    },
                    req(2, 1, 5),
                    Req {
                        level: 1,
                        ..req(3, 1, 1)
                    },
                ],
                0,
                cfg(2, &[], 0),
                Some(vec![2, 1]),
            ),
        ];
        for (name, reqs, now, cfg, want) in cases {
            let mut q = Queues::new(2);
            for r in reqs {
                q.push(r);
            }
            let got = plan(&mut q, at(now), &cfg);
            assert_eq!(ids(&got), want, "{name}: {got:?}");
        }
    }

    #[test]
    fn wait_until_is_the_oldest_plus_delay() {
        let mut q = Queues::new(1);
        q.push(req(1, 1, 30));
        q.push(req(2, 1, 40));
        assert_eq!(
            plan(&mut q, at(50), &cfg(8, &[], 100)),
            Action::WaitUntil(at(130))
        );
        assert_eq!(q.len(), 2);
        assert_eq!(
            plan(&mut Queues::<Req>::new(1), at(0), &cfg(8, &[], 100)),
            Action::Idle
        );
    }

    #[test]
    fn timeouts_reject_or_delay() {
        let mut q = Queues::new(1);
        q.push(Req {
            deadline_us: Some(100),
            ..req(1, 1, 0)
        });
        q.push(Req {
            deadline_us: Some(100),
            delay: true,
            ..req(2, 1, 0)
        });
        q.push(Req {
            deadline_us: Some(300),
            ..req(3, 1, 0)
        });
        q.push(req(4, 1, 0));
        assert_eq!(q.next_deadline(), Some(at(100)));
        let rejected = q.expire(at(100));
        assert_eq!(rejected.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1]);
        assert_eq!(q.next_deadline(), Some(at(300)));
        // The delayed request is served after the ones that did not time out.
        let order: Vec<u32> = q.iter().map(|r| r.id).collect();
        assert_eq!(order, vec![3, 4, 2]);
        assert_eq!(
            ids(&plan(&mut q, at(100), &cfg(8, &[], 0))),
            Some(vec![3, 4, 2])
        );
    }
}
