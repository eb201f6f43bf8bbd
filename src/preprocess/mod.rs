//! Server-side text preprocessing: a model whose config names a `tokenizer` takes UTF-8 texts
//! (one BYTES element per batch row) and the server turns them into the graph's token inputs
//! (`input_ids`, `attention_mask`, `token_type_ids` when the graph has it) on a pool of tokenizer
//! threads, then optionally pools and normalises the graph's token output.
//!
//! - `model::text::TextSpec`: the text settings parsed from the config's `parameters` (the
//!   description layer owns them; this module runs them).
//! - `tokenizer`: the `Encoder` (the only code that names `tokenizers::`) and the thread pool.
//! - `post`: pure functions: padding token rows to a batch, pooling, L2, trimming.
//!
//! Request path (ARCHITECTURE.md step 4): `validate` checks the BYTES input, the pool replaces
//! it with token tensors (`validate::tokenized`), the scheduler batches requests of
//! different token lengths together padded to the longest, and the batch applies `post`.

pub(crate) mod admission;
pub mod post;
pub(crate) mod tokenizer;
#[cfg(test)]
mod tokenizer_tests;
