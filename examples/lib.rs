//! The README's examples live in this package's `[[example]]` targets; run one with
//! `cargo run --example <name>` from the repository root.
