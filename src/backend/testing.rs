//! A fake backend for tests (built only for `cfg(test)` and the `test-backend` feature, never
//! into the release binary): no ONNX Runtime, outputs copy the inputs (or add and subtract
//! them), every execution is logged so tests can see how requests were batched and how many
//! ran at once, and a `Gate` lets a test hold executions until it opens it, so scheduling is
//! tested on observable state rather than on the clock.
//!
//! `FakeBackend` serves a model repository whose model files are `FakeModel` texts: each
//! declares the inputs and outputs that `inspect` reports and what the runner computes.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use super::{Backend, ComputeTimes, RunOutput, Runner};
use crate::error::{Error, Result};
use crate::model::io::{IoDesc, ModelIo};
use crate::model::{InstanceSpec, ModelSpec};
use crate::tensor::{DataType, Tensor};

/// What the fake instances have done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    /// Executions begun (warmup runs included).
    pub started: usize,
    /// Executions begun and not yet ended: held at the gate or computing.
    pub running: usize,
    /// Executions ended, successfully or not.
    pub finished: usize,
}

/// Shared record of what the fake instances executed.
pub struct FakeLog {
    /// Rows of each successful execution, in completion order.
    pub batches: Mutex<Vec<usize>>,
    /// The first INT32 element of each execution's first input, in the order executions
    /// started (past the gate): which request a batch led with.
    pub leaders: Mutex<Vec<i32>>,
    running: AtomicUsize,
    /// Most executions seen running at the same moment.
    pub max_concurrent: AtomicUsize,
    activity: watch::Sender<Activity>,
}

impl Default for FakeLog {
    fn default() -> Self {
        FakeLog {
            batches: Mutex::default(),
            leaders: Mutex::default(),
            running: AtomicUsize::new(0),
            max_concurrent: AtomicUsize::new(0),
            activity: watch::Sender::new(Activity::default()),
        }
    }
}

impl FakeLog {
    pub fn batches(&self) -> Vec<usize> {
        self.batches.lock().clone()
    }

    /// The activity now.
    pub fn activity(&self) -> Activity {
        *self.activity.borrow()
    }

    /// Resolves once the activity satisfies `done` (at once if it already does). Tests wait on
    /// this instead of sleeping until "the instance is busy" or "the batch has run".
    pub async fn wait_until(&self, done: impl FnMut(&Activity) -> bool) -> Activity {
        let mut rx = self.activity.subscribe();
        rx.wait_for(done)
            .await
            .map(|a| *a)
            .expect("the log owns the sender")
    }

    fn begin(&self) {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_concurrent.fetch_max(now, Ordering::SeqCst);
        self.activity.send_modify(|a| {
            a.started += 1;
            a.running += 1;
        });
    }

    fn end(&self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.activity.send_modify(|a| {
            a.running -= 1;
            a.finished += 1;
        });
    }
}

/// Holds fake executions while closed: a run that reaches a closed gate waits there (still
/// counted as running) until the gate opens. Open by default.
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    /// From now on, runs wait at the gate.
    pub fn close(&self) {
        *self.0.0.lock() = true;
    }

    /// Releases every waiting run, and lets later ones through.
    pub fn open(&self) {
        *self.0.0.lock() = false;
        self.0.1.notify_all();
    }

    fn pass(&self) {
        let (closed, cv) = &*self.0;
        let mut closed = closed.lock();
        while *closed {
            cv.wait(&mut closed);
        }
    }
}

/// What a fake runner computes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum FakeOp {
    /// Requested output `i` is a copy of input `i`, in the order given.
    #[default]
    Copy,
    /// Each declared output is a copy of the declared input at the same index.
    CopyByName {
        inputs: Vec<String>,
        outputs: Vec<String>,
    },
    /// `simple`'s arithmetic on INT32: `sum = a + b`, `difference = a - b` (wrapping).
    AddSub {
        a: String,
        b: String,
        sum: String,
        difference: String,
    },
}

/// Computes `op`; each run takes `work` of real time (zero for the fake backend's runners).
#[derive(Default)]
pub struct FakeRunner {
    pub log: Arc<FakeLog>,
    pub work: Duration,
    /// Fail every run with this message (for error-path tests).
    pub fail: Option<String>,
    /// A batch whose first INT32 element is this value takes 5 × `work`.
    pub slow_value: Option<i32>,
    /// Runs wait here while it is closed.
    pub gate: Gate,
    /// A batch whose first INT32 element is this value also waits at this gate (to hold one
    /// request while others run).
    pub hold: Option<(i32, Gate)>,
    pub op: FakeOp,
}

impl Runner for FakeRunner {
    fn run(&mut self, inputs: Vec<Tensor>, outputs: &[&str]) -> Result<RunOutput> {
        self.log.begin();
        self.gate.pass();
        let first = inputs
            .first()
            .and_then(|t| t.data().get(..4))
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(i32::from_le_bytes);
        if let Some(value) = first {
            self.log.leaders.lock().push(value);
        }
        if let Some((value, gate)) = &self.hold
            && first == Some(*value)
        {
            gate.pass();
        }
        let slow = self.slow_value.is_some() && first == self.slow_value;
        let work = if slow { self.work * 5 } else { self.work };
        if !work.is_zero() {
            std::thread::sleep(work);
        }
        let result = match &self.fail {
            Some(msg) => Err(Error::internal(msg.clone())),
            None => compute(&self.op, inputs, outputs),
        };
        if let Ok((rows, _)) = &result {
            self.log.batches.lock().push(*rows);
        }
        self.log.end();
        let (_, tensors) = result?;
        Ok(RunOutput {
            tensors,
            times: ComputeTimes {
                infer: work,
                ..Default::default()
            },
        })
    }
}

/// The rows of the batch (the first input's first dimension) and the requested outputs.
fn compute(op: &FakeOp, inputs: Vec<Tensor>, outputs: &[&str]) -> Result<(usize, Vec<Tensor>)> {
    let rows = inputs
        .first()
        .and_then(|t| t.shape().first())
        .copied()
        .unwrap_or(1);
    let rows = usize::try_from(rows).unwrap_or(0);
    let find = |name: &str| {
        inputs
            .iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| Error::internal(format!("fake model: no input '{name}'")))
    };
    let tensors = match op {
        FakeOp::Copy => outputs
            .iter()
            .zip(inputs.iter().cloned())
            .map(|(name, t)| t.renamed(*name))
            .collect(),
        FakeOp::CopyByName {
            inputs: ins,
            outputs: outs,
        } => outputs
            .iter()
            .map(|name| {
                let i = outs
                    .iter()
                    .position(|o| o == name)
                    .ok_or_else(|| Error::internal(format!("fake model: no output '{name}'")))?;
                let input = ins
                    .get(i)
                    .ok_or_else(|| Error::internal(format!("fake model: no input for '{name}'")))?;
                Ok(find(input)?.clone().renamed(*name))
            })
            .collect::<Result<Vec<_>>>()?,
        FakeOp::AddSub {
            a,
            b,
            sum,
            difference,
        } => {
            let (a, b) = (find(a)?, find(b)?);
            outputs
                .iter()
                .map(|name| {
                    let f: fn(i32, i32) -> i32 = if name == sum {
                        i32::wrapping_add
                    } else if name == difference {
                        i32::wrapping_sub
                    } else {
                        return Err(Error::internal(format!("fake model: no output '{name}'")));
                    };
                    elementwise(a, b, f, name)
                })
                .collect::<Result<Vec<_>>>()?
        }
    };
    Ok((rows, tensors))
}

fn elementwise(a: &Tensor, b: &Tensor, f: fn(i32, i32) -> i32, name: &str) -> Result<Tensor> {
    if a.dtype() != DataType::Int32 || b.dtype() != DataType::Int32 || a.shape() != b.shape() {
        return Err(Error::internal(
            "fake model: add_sub takes two INT32 inputs of one shape",
        ));
    }
    let values = |t: &Tensor| -> Vec<i32> {
        t.data()
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let out: Vec<u8> = values(a)
        .into_iter()
        .zip(values(b))
        .flat_map(|(x, y)| f(x, y).to_le_bytes())
        .collect();
    Tensor::new(name, DataType::Int32, a.shape().to_vec(), out)
}

/// The text of a fake model file: its first line is `MAGIC`, then one line per tensor,
/// `input|output NAME DATATYPE DIM...` (KServe datatype names, -1 for a variable dimension,
/// the batch dimension included), and optionally `op add_sub` (the first two inputs and
/// outputs are `a`, `b`, `a + b`, `a - b`; without it each output copies its input).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FakeModel {
    pub inputs: Vec<(String, DataType, Vec<i64>)>,
    pub outputs: Vec<(String, DataType, Vec<i64>)>,
    pub add_sub: bool,
}

/// The first line of every fake model file.
pub const MAGIC: &str = "nereid-fake-model";

impl FakeModel {
    /// `simple` as the fake backend runs it: INT32 `[-1,16]` inputs INPUT0/INPUT1, outputs
    /// OUTPUT0 = sum and OUTPUT1 = difference.
    pub fn simple() -> FakeModel {
        let t = |n: &str| (n.to_string(), DataType::Int32, vec![-1, 16]);
        FakeModel {
            inputs: vec![t("INPUT0"), t("INPUT1")],
            outputs: vec![t("OUTPUT0"), t("OUTPUT1")],
            add_sub: true,
        }
    }

    pub fn to_text(&self) -> String {
        let mut out = format!("{MAGIC}\n");
        if self.add_sub {
            out.push_str("op add_sub\n");
        }
        for (kind, list) in [("input", &self.inputs), ("output", &self.outputs)] {
            for (name, dtype, dims) in list {
                let dims: Vec<String> = dims.iter().map(i64::to_string).collect();
                out.push_str(&format!(
                    "{kind} {name} {} {}\n",
                    dtype.as_str(),
                    dims.join(" ")
                ));
            }
        }
        out
    }

    pub fn parse(text: &str) -> Result<FakeModel> {
        let bad = |why: String| Error::invalid_arg(format!("not a fake model file: {why}"));
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(bad(format!("the first line is not '{MAGIC}'")));
        }
        let mut model = FakeModel::default();
        for line in lines.filter(|l| !l.trim().is_empty()) {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["op", "add_sub"] => model.add_sub = true,
                [kind @ ("input" | "output"), name, dtype, dims @ ..] => {
                    let dtype = DataType::from_wire(dtype)
                        .ok_or_else(|| bad(format!("unknown datatype '{dtype}'")))?;
                    let dims = dims
                        .iter()
                        .map(|d| d.parse::<i64>())
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(|e| bad(format!("line '{line}': {e}")))?;
                    let list = if *kind == "input" {
                        &mut model.inputs
                    } else {
                        &mut model.outputs
                    };
                    list.push((name.to_string(), dtype, dims));
                }
                _ => return Err(bad(format!("line '{line}'"))),
            }
        }
        if model.add_sub && (model.inputs.len() < 2 || model.outputs.len() < 2) {
            return Err(bad("add_sub needs two inputs and two outputs".into()));
        }
        Ok(model)
    }

    fn io(&self) -> ModelIo {
        let desc = |list: &[(String, DataType, Vec<i64>)]| {
            list.iter()
                .map(|(name, dtype, dims)| IoDesc {
                    name: name.clone(),
                    dtype: Ok(*dtype),
                    shape: dims.clone(),
                })
                .collect()
        };
        ModelIo {
            inputs: desc(&self.inputs),
            outputs: desc(&self.outputs),
        }
    }

    fn op(&self) -> FakeOp {
        let names = |list: &[(String, DataType, Vec<i64>)]| -> Vec<String> {
            list.iter().map(|(n, _, _)| n.clone()).collect()
        };
        let (inputs, outputs) = (names(&self.inputs), names(&self.outputs));
        if self.add_sub {
            let nth = |list: &[String], i: usize| list.get(i).cloned().unwrap_or_default();
            FakeOp::AddSub {
                a: nth(&inputs, 0),
                b: nth(&inputs, 1),
                sum: nth(&outputs, 0),
                difference: nth(&outputs, 1),
            }
        } else {
            FakeOp::CopyByName { inputs, outputs }
        }
    }
}

/// A `Backend` over `FakeModel` files: every runner it creates shares one log and one gate.
#[derive(Clone, Default)]
pub struct FakeBackend {
    pub log: Arc<FakeLog>,
    pub gate: Gate,
}

impl FakeBackend {
    fn read(path: &Path) -> Result<FakeModel> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid_arg(format!(
                "failed to read fake model '{}': {e}",
                path.display()
            ))
        })?;
        FakeModel::parse(&text)
    }
}

impl Backend for FakeBackend {
    fn inspect(&self, path: &Path) -> Result<ModelIo> {
        Ok(Self::read(path)?.io())
    }

    fn create_runner(
        &self,
        spec: &ModelSpec,
        _group: &InstanceSpec,
        _index: u32,
    ) -> Result<Box<dyn Runner>> {
        let model = Self::read(&spec.model_path)?;
        Ok(Box::new(FakeRunner {
            log: self.log.clone(),
            gate: self.gate.clone(),
            op: model.op(),
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_text_round_trips_and_junk_is_refused() {
        let m = FakeModel::simple();
        assert_eq!(FakeModel::parse(&m.to_text()).unwrap(), m);
        for junk in [
            "",
            "onnx",
            "nereid-fake-model\ninput X NOPE 1",
            "nereid-fake-model\nx",
        ] {
            assert!(FakeModel::parse(junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn add_sub_computes_simple_and_copy_maps_by_name() {
        let t = |name: &str, v: &[i32]| {
            let data: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            Tensor::new(name, DataType::Int32, vec![1, v.len() as i64], data).unwrap()
        };
        let ints = |t: &Tensor| -> Vec<i32> {
            t.data()
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let inputs = vec![t("INPUT0", &[5, 7]), t("INPUT1", &[2, 10])];
        let (rows, out) = compute(
            &FakeModel::simple().op(),
            inputs.clone(),
            &["OUTPUT1", "OUTPUT0"],
        )
        .unwrap();
        assert_eq!(rows, 1);
        assert_eq!((out[0].name(), ints(&out[0])), ("OUTPUT1", vec![3, -3]));
        assert_eq!((out[1].name(), ints(&out[1])), ("OUTPUT0", vec![7, 17]));
        let copy = FakeOp::CopyByName {
            inputs: vec!["INPUT0".into(), "INPUT1".into()],
            outputs: vec!["A".into(), "B".into()],
        };
        let (_, out) = compute(&copy, inputs, &["B"]).unwrap();
        assert_eq!(ints(&out[0]), vec![2, 10]);
    }
}
