//! How models are loaded and kept (Triton's model repository manager): the `manager` owns the
//! model table and every state change; the `loader` turns a model folder into a `LoadedModel`
//! (config, autocomplete, backend sessions, tokenizer, scheduler, `warmup`); `poll` watches the
//! repository in poll mode; `overrides` writes the files sent with a load request; the
//! `reaper` joins the threads of versions that are gone, off the async workers.

pub mod loader;
pub mod manager;
pub mod overrides;
pub mod poll;
pub mod reaper;
pub mod warmup;
