//! Replays every checked-in fuzz input (`fuzz/corpus/<target>/`) through the same entry points
//! and properties the libFuzzer targets use, on stable Rust: the CI-safe half of fuzzing.
//! Long runs are `tests/fuzz.sh [seconds-per-target]` (nightly, cargo-fuzz).

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::path::Path;

#[test]
fn every_corpus_input_keeps_its_properties() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, target) in targets::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("corpus entry").path())
            .collect();
        inputs.sort();
        assert!(inputs.len() >= 3, "{name}: the corpus has only {} inputs", inputs.len());
        for input in inputs {
            let data = std::fs::read(&input).expect("read corpus input");
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} breaks a property", input.display());
        }
    }
}
