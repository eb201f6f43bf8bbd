//! A model's config.pbtxt (operators and the load API's callers write it): parsing, the list-colon
//! fix-up and normalisation return errors, never panic.
use std::path::Path;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        if let Ok(mut cfg) = nereid::internals::parse_pbtxt(Path::new("config.pbtxt"), text) {
            let _ = nereid::internals::normalize(&mut cfg, &[]);
        }
    });
}
