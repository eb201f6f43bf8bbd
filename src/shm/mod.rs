//! Client shared memory (shared-memory.md): the regions clients register, and the placement of
//! one request's tensors in them.
//!
//! - `region`: one registered region and its checked reads and writes.
//! - `placement`: the regions one request uses, pinned until its response is written.
//!
//! A system region is a POSIX shared-memory object under `/dev/shm`. The server keeps its
//! descriptor open while the region is registered and reads and writes it with `pread` and
//! `pwrite` at the registered offset, never through a mapping: the client owns the object and
//! may shrink or rewrite it at any time, and a shrunken object is then a short read (an
//! error), never a SIGBUS. (Triton maps the object; unlike Triton, a register offset need not
//! be a multiple of the page size here.)
//!
//! A region in use by a request is pinned: unregistering it answers at once, and the region is
//! removed (its descriptor closed) when the last request using it lets go. Until then its name
//! stays taken.

mod placement;
mod region;

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::request::InferRequest;

pub(crate) use placement::{Placement, ShmRef};
use region::{Memory, Region};

/// Triton's answer to register and unregister while client shared memory is off (behaviour.md
/// E36); status still works.
pub(crate) const DISABLED: &str =
    "Client shared memory is disabled. Start the server with '--allow-client-shm=true' to enable.";

/// Keys Triton keeps for its Python backend's own regions.
const RESERVED_PREFIX: &str = "triton_python_backend_shm_region_";

/// A registered region and the requests using it.
struct Entry {
    region: Arc<Region>,
    /// Requests holding a pin on this region now.
    users: usize,
    /// Unregistered while in use: removed when `users` reaches 0; no new request finds it.
    retired: bool,
}

type Table = Arc<Mutex<BTreeMap<String, Entry>>>;

/// Every region registered with this server, system and CUDA in one name space.
pub struct SharedMemory {
    allow: bool,
    table: Table,
}

/// A system region as status reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemStatus {
    pub name: String,
    pub key: String,
    pub offset: u64,
    pub byte_size: u64,
}

/// A CUDA region as status reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaStatus {
    pub name: String,
    pub device_id: u64,
    pub byte_size: u64,
}

impl SharedMemory {
    /// `allow`: `--allow-client-shm`; when false, register and unregister are refused.
    pub fn new(allow: bool) -> Self {
        SharedMemory {
            allow,
            table: Arc::default(),
        }
    }

    /// Refuses when client shared memory is off (register and unregister call it first).
    pub fn check_allowed(&self) -> Result<()> {
        if self.allow {
            Ok(())
        } else {
            Err(Error::unsupported(DISABLED))
        }
    }

    /// Registers the system region `name`: `byte_size` bytes of the shared-memory object `key`
    /// from `offset`, with Triton's checks in Triton's order (shared-memory.md §4).
    pub fn register_system(
        &self,
        name: &str,
        key: &str,
        offset: u64,
        byte_size: u64,
    ) -> Result<()> {
        self.check_allowed()?;
        let bare = key.trim_start_matches('/');
        if bare.is_empty() {
            return Err(Error::invalid_arg(format!(
                "cannot register shared memory region '{name}' - invalid shm key '{key}'"
            )));
        }
        if bare.starts_with(RESERVED_PREFIX) {
            return Err(Error::invalid_arg(format!(
                "cannot register shared memory region '{name}' with key '{key}' as the key contains the reserved prefix '{RESERVED_PREFIX}'"
            )));
        }
        self.check_free(name)?;
        let region = Region::open_system(name, key, offset, byte_size)?;
        self.insert(region)
    }

    /// CUDA register. This build reads and writes no device memory, so it answers as Triton
    /// built without GPU support does, once the name is known to be free.
    pub fn register_cuda(&self, name: &str, _device_id: i64, _byte_size: u64) -> Result<()> {
        self.check_allowed()?;
        self.check_free(name)?;
        Err(Error::invalid_arg(format!(
            "failed to register CUDA shared memory region: '{name}', GPUs not supported"
        )))
    }

    fn check_free(&self, name: &str) -> Result<()> {
        if self.table.lock().contains_key(name) {
            return Err(already(name));
        }
        Ok(())
    }

    fn insert(&self, region: Region) -> Result<()> {
        let mut table = self.table.lock();
        // Checked again: another register of the same name may have won while this one opened
        // its object (the loser's descriptor closes as `region` drops).
        if table.contains_key(&region.name) {
            return Err(already(&region.name));
        }
        table.insert(
            region.name.clone(),
            Entry {
                region: Arc::new(region),
                users: 0,
                retired: false,
            },
        );
        Ok(())
    }

    /// Unregisters the system region `name`, or every system region when `name` is empty. An
    /// unknown name, or one of a CUDA region, is not an error and changes nothing.
    pub fn unregister_system(&self, name: &str) -> Result<()> {
        self.check_allowed()?;
        self.unregister(name, false);
        Ok(())
    }

    /// As `unregister_system`, for CUDA regions.
    pub fn unregister_cuda(&self, name: &str) -> Result<()> {
        self.check_allowed()?;
        self.unregister(name, true);
        Ok(())
    }

    fn unregister(&self, name: &str, cuda: bool) {
        let mut table = self.table.lock();
        let names: Vec<String> = table
            .iter()
            .filter(|(n, e)| (name.is_empty() || *n == name) && e.region.is_cuda() == cuda)
            .map(|(n, _)| n.clone())
            .collect();
        for n in names {
            let Some(entry) = table.get_mut(&n) else {
                continue;
            };
            if entry.users == 0 {
                table.remove(&n);
            } else {
                entry.retired = true;
            }
        }
    }

    /// Status of the system region `name`, or of every one (sorted by name) when it is empty.
    pub fn system_status(&self, name: &str) -> Result<Vec<SystemStatus>> {
        let rows = self.status(name, false)?;
        Ok(rows
            .iter()
            .filter_map(|r| match &r.memory {
                Memory::System { key, offset, .. } => Some(SystemStatus {
                    name: r.name.clone(),
                    key: key.clone(),
                    offset: *offset,
                    byte_size: r.byte_size,
                }),
                Memory::Cuda { .. } => None,
            })
            .collect())
    }

    /// Status of the CUDA region `name`, or of every one when it is empty.
    pub fn cuda_status(&self, name: &str) -> Result<Vec<CudaStatus>> {
        let rows = self.status(name, true)?;
        Ok(rows
            .iter()
            .filter_map(|r| match &r.memory {
                Memory::Cuda { device_id } => Some(CudaStatus {
                    name: r.name.clone(),
                    device_id: *device_id,
                    byte_size: r.byte_size,
                }),
                Memory::System { .. } => None,
            })
            .collect())
    }

    fn status(&self, name: &str, cuda: bool) -> Result<Vec<Arc<Region>>> {
        let table = self.table.lock();
        let live = |e: &&Entry| !e.retired;
        if name.is_empty() {
            return Ok(table
                .values()
                .filter(live)
                .filter(|e| e.region.is_cuda() == cuda)
                .map(|e| e.region.clone())
                .collect());
        }
        let (kind, other) = if cuda {
            ("cuda", "system")
        } else {
            ("system", "CUDA")
        };
        match table.get(name).filter(live) {
            None => Err(Error::not_found(format!(
                "Unable to find {kind} shared memory region: '{name}'"
            ))),
            Some(e) if e.region.is_cuda() != cuda => Err(Error::not_found(format!(
                "The region named '{name}' is registered as {other} shared memory, not {} shared memory",
                if cuda { "CUDA" } else { "system" }
            ))),
            Some(e) => Ok(vec![e.region.clone()]),
        }
    }

    /// Places a decoded request's tensors: each input `refs` names is read from its region
    /// into the request (one copy), each output's place is checked and pinned. The returned
    /// placement writes the outputs once the response is there.
    pub fn place(&self, req: &mut InferRequest, refs: &ShmRefs) -> Result<Placement> {
        let mut placement = Placement::new(self.table.clone());
        for (index, r) in &refs.inputs {
            let data = placement.input(r)?;
            if let Some(input) = req.inputs.get_mut(*index) {
                input.data = data;
            }
        }
        for (name, r) in &refs.outputs {
            placement.output(name, r)?;
        }
        Ok(placement)
    }
}

/// Where a decoded request puts tensors in shared memory: inputs by their index in the
/// request (their data is filled in by `SharedMemory::place`), outputs by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShmRefs {
    pub inputs: Vec<(usize, ShmRef)>,
    pub outputs: Vec<(String, ShmRef)>,
}

impl ShmRefs {
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty() && self.outputs.is_empty()
    }
}

fn already(name: &str) -> Error {
    Error::already_exists(format!("shared memory region '{name}' already in manager"))
}

#[cfg(test)]
mod tests;
