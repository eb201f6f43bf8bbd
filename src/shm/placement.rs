//! The regions one request uses: its inputs read from them, its outputs written into them.
//! Every region a request names is pinned from its decoding until its `Placement` drops (after
//! its response is written), so an unregister in between is deferred (shared-memory.md §7).

use std::sync::Arc;

use bytes::Bytes;

use super::region::Region;
use super::{Entry, Table};
use crate::error::{Error, Result};
use crate::request::InferResponse;

/// A tensor's place in a region, as the request's `shared_memory_*` parameters name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShmRef {
    pub region: String,
    pub offset: u64,
    pub byte_size: u64,
}

/// A region held for one request: while it lives, the region stays registered.
struct Pin {
    table: Table,
    region: Arc<Region>,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut table = self.table.lock();
        let name = &self.region.name;
        let Some(entry) = table.get_mut(name) else {
            return;
        };
        if !Arc::ptr_eq(&entry.region, &self.region) {
            return;
        }
        entry.users = entry.users.saturating_sub(1);
        if entry.retired && entry.users == 0 {
            table.remove(name);
        }
    }
}

/// An output the model writes into a region.
struct Target {
    output: String,
    region: Arc<Region>,
    offset: u64,
    byte_size: u64,
}

/// One request's regions: see the module comment.
pub struct Placement {
    table: Table,
    pins: Vec<Pin>,
    outputs: Vec<Target>,
}

impl Placement {
    pub(super) fn new(table: Table) -> Self {
        Placement {
            table,
            pins: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// Pins the region `r` names after Triton's checks of the tensor's place in it
    /// (shared-memory.md §8.3).
    fn pin(&mut self, r: &ShmRef) -> Result<Arc<Region>> {
        let name = &r.region;
        let mut table = self.table.lock();
        let entry: &mut Entry = table.get_mut(name).filter(|e| !e.retired).ok_or_else(|| {
            Error::not_found(format!("Unable to find shared memory region: '{name}'"))
        })?;
        let size = entry.region.byte_size;
        if r.offset >= size {
            return Err(Error::invalid_arg(format!(
                "Invalid offset for shared memory region: '{name}'"
            )));
        }
        let Some(end) = r.byte_size.checked_add(r.offset) else {
            return Err(Error::invalid_arg(format!(
                "Integer overflow detected: byte_size ({}) + offset ({}) exceeds maximum value ({}) for region '{name}'",
                r.byte_size,
                r.offset,
                u64::MAX
            )));
        };
        if end > size {
            return Err(Error::invalid_arg(format!(
                "Invalid offset + byte size for shared memory region: '{name}'"
            )));
        }
        entry.users += 1;
        let region = entry.region.clone();
        drop(table);
        self.pins.push(Pin {
            table: self.table.clone(),
            region: region.clone(),
        });
        Ok(region)
    }

    /// The bytes of an input placed at `r`: one copy, which the request's validation then
    /// checks (a BYTES input's length prefixes are read from this copy, never from the region
    /// the client may still be writing).
    pub fn input(&mut self, r: &ShmRef) -> Result<Bytes> {
        let region = self.pin(r)?;
        Ok(region.read(r.offset, r.byte_size)?.into())
    }

    /// Places the output `output` at `r`; its bytes are written there by `write_outputs`.
    pub fn output(&mut self, output: &str, r: &ShmRef) -> Result<()> {
        let region = self.pin(r)?;
        self.outputs.push(Target {
            output: output.to_string(),
            region,
            offset: r.offset,
            byte_size: r.byte_size,
        });
        Ok(())
    }

    /// True when some output goes to a region.
    pub fn has_outputs(&self) -> bool {
        !self.outputs.is_empty()
    }

    /// Whether the output `name` was written to a region (its data then stays out of the reply).
    pub fn holds_output(&self, name: &str) -> bool {
        self.outputs.iter().any(|t| t.output == name)
    }

    /// Writes each placed output of `resp` into its region. An output larger than its place
    /// is Triton's INTERNAL error (behaviour.md E39); exactly equal is fine.
    pub fn write_outputs(&self, resp: &InferResponse) -> Result<()> {
        for target in &self.outputs {
            let Some(t) = resp.outputs.iter().find(|t| t.name() == target.output) else {
                continue;
            };
            let len = t.data().len() as u64;
            if len > target.byte_size {
                return Err(Error::internal(format!(
                    "shared memory size specified with the request for output '{}' ({} bytes) should be at least {len} bytes to hold the results",
                    target.output, target.byte_size
                )));
            }
            target.region.write(target.offset, t.data())?;
        }
        Ok(())
    }
}
