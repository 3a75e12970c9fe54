//! Compile-time behaviour of `#[transactional]`: what it accepts (`tests/ui/pass`) and the
//! errors it gives (`tests/ui/fail`, with the expected messages in the `.stderr` files).
//!
//! Regenerate the `.stderr` files after an intended change to a message with
//! `TRYBUILD=overwrite cargo test -p transactional-macros --test ui`, then read every changed file.

#[test]
fn ui() {
    // The cases are compiled by a cargo of trybuild's: without debug info, as the workspace's
    // own profile has it (trybuild does not copy profiles), they build in half the time.
    std::env::set_var("CARGO_PROFILE_DEV_DEBUG", "false");
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
