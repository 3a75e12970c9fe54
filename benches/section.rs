//! A bench's own section of the report (`BENCHMARKS.md`): the text from its `<!-- name: file -->`
//! marker to the next marker, replaced in place; the other benches' sections stay.

/// Writes `section` (starting with `marker`) into `BENCH_REPORT` in place of the bench's
/// previous one, or appends it; prints it when `BENCH_REPORT` is not set.
pub fn write(marker: &str, section: &str) {
    let Ok(path) = std::env::var("BENCH_REPORT") else {
        eprintln!("{section}");
        return;
    };
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let (head, tail) = match old.split_once(marker) {
        // Another bench's section after this one stays.
        Some((head, rest)) => (head, rest.find("<!-- ").map_or("", |at| &rest[at..])),
        None => (old.as_str(), ""),
    };
    let tail = if tail.is_empty() {
        String::new()
    } else {
        format!("\n\n{tail}")
    };
    let report = format!("{}\n\n{}{tail}", head.trim_end(), section.trim_end());
    std::fs::write(&path, report).unwrap();
}
