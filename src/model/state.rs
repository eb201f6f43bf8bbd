//! Lifecycle states of a model version, with the names the repository index uses.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelState {
    Unknown,
    Loading,
    Ready,
    Unloading,
    Unavailable,
}

impl ModelState {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Unknown => "UNKNOWN",
            ModelState::Loading => "LOADING",
            ModelState::Ready => "READY",
            ModelState::Unloading => "UNLOADING",
            ModelState::Unavailable => "UNAVAILABLE",
        }
    }
}
