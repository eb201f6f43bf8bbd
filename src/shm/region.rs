//! One registered region and its checked reads and writes.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// Where POSIX shared-memory objects live on Linux (what glibc's `shm_open` opens).
const SHM_DIR: &str = "/dev/shm";

pub(super) enum Memory {
    /// A POSIX shared-memory object, open for reading and writing.
    System {
        key: String,
        /// Where the region starts inside the object.
        offset: u64,
        file: File,
    },
    /// Registered CUDA memory (this build registers none; see `SharedMemory::register_cuda`).
    #[allow(
        dead_code,
        reason = "status and unregister cover a kind no register creates yet"
    )]
    Cuda { device_id: u64 },
}

pub(super) struct Region {
    pub(super) name: String,
    pub(super) byte_size: u64,
    pub(super) memory: Memory,
}

impl Region {
    pub(super) fn is_cuda(&self) -> bool {
        matches!(self.memory, Memory::Cuda { .. })
    }

    /// Opens `key` as `shm_open(key, O_RDWR)` would: leading slashes dropped, no other slash,
    /// never through a symbolic link, and only a regular file of `/dev/shm` itself (a name
    /// cannot reach another file system's files). `offset + byte_size` must lie within the
    /// object now.
    pub(super) fn open_system(
        name: &str,
        key: &str,
        offset: u64,
        byte_size: u64,
    ) -> Result<Region> {
        let unable = || Error::internal(format!("Unable to open shared memory region: '{key}'"));
        let bare = key.trim_start_matches('/');
        if bare.contains('/') || bare == "." || bare == ".." {
            return Err(unable());
        }
        let dir = Path::new(SHM_DIR);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dir.join(bare))
            .map_err(|_| unable())?;
        let invalid = || Error::internal(format!("Invalid shared memory region: '{key}'"));
        let meta = file.metadata().map_err(|_| invalid())?;
        let dir_meta = std::fs::metadata(dir).map_err(|_| invalid())?;
        if !meta.is_file() || meta.dev() != dir_meta.dev() {
            return Err(unable());
        }
        let end = offset.checked_add(byte_size);
        if end.is_none_or(|end| end > meta.len()) {
            return Err(Error::invalid_arg(format!(
                "failed to register shared memory region '{name}': invalid args"
            )));
        }
        if byte_size == 0 {
            // Triton's mmap of length 0 fails with EINVAL, and so does its register.
            return Err(Error::invalid_arg(format!(
                "failed to register shared memory region '{name}': unable to process address spaceInvalid argument"
            )));
        }
        Ok(Region {
            name: name.to_string(),
            byte_size,
            memory: Memory::System {
                key: key.to_string(),
                offset,
                file,
            },
        })
    }

    fn system(&self) -> Result<(&File, u64)> {
        match &self.memory {
            Memory::System { file, offset, .. } => Ok((file, *offset)),
            Memory::Cuda { .. } => Err(Error::unsupported(format!(
                "shared memory region '{}' is CUDA memory, which this server cannot read or write",
                self.name
            ))),
        }
    }

    fn truncated(&self) -> Error {
        Error::invalid_arg(format!(
            "shared memory region '{}' is smaller than when it was registered: its object was truncated",
            self.name
        ))
    }

    /// A copy of `len` bytes at `at` within the region (the caller checked `at + len` against
    /// `byte_size`); a region whose object shrank since is an error.
    pub(super) fn read(&self, at: u64, len: u64) -> Result<Vec<u8>> {
        let (file, base) = self.system()?;
        let len = usize::try_from(len).map_err(|_| self.truncated())?;
        let mut buf = Vec::new();
        buf.try_reserve_exact(len).map_err(|_| {
            Error::unavailable(format!(
                "cannot allocate {len} bytes to read shared memory region '{}'",
                self.name
            ))
        })?;
        buf.resize(len, 0);
        let pos = base.checked_add(at).ok_or_else(|| self.truncated())?;
        file.read_exact_at(&mut buf, pos)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => self.truncated(),
                _ => Error::internal(format!(
                    "failed to read shared memory region '{}': {e}",
                    self.name
                )),
            })?;
        Ok(buf)
    }

    /// Writes `data` at `at` within the region (the caller checked it fits `byte_size`). An
    /// object that shrank since register is an error, not silently grown back.
    pub(super) fn write(&self, at: u64, data: &[u8]) -> Result<()> {
        let (file, base) = self.system()?;
        let pos = base.checked_add(at).ok_or_else(|| self.truncated())?;
        let end = pos
            .checked_add(data.len() as u64)
            .ok_or_else(|| self.truncated())?;
        let size = file
            .metadata()
            .map_err(|e| {
                Error::internal(format!(
                    "failed to write shared memory region '{}': {e}",
                    self.name
                ))
            })?
            .len();
        if end > size {
            return Err(self.truncated());
        }
        file.write_all_at(data, pos).map_err(|e| {
            Error::internal(format!(
                "failed to write shared memory region '{}': {e}",
                self.name
            ))
        })
    }
}
