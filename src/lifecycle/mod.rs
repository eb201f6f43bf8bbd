//! How models are loaded and kept (Triton's model repository manager): the `manager` owns the
//! model table and every state change; the `loader` turns a model folder into a `LoadedModel`
//! (config, autocomplete, backend sessions, tokenizer, scheduler, `warmup`); `poll` watches the
//! repository in poll mode; `drains` keeps a replaced or unloaded sequence model serving its
//! running sequences; `remote` reads repositories in object stores through a local
//! cache; `overrides` writes the files sent with a load request; the
//! `reaper` joins the threads of versions that are gone, off the async workers.

pub(crate) mod drains;
pub(crate) mod loader;
pub(crate) mod manager;
pub(crate) mod overrides;
pub(crate) mod poll;
pub(crate) mod reaper;
pub(crate) mod remote;
pub(crate) mod warmup;
