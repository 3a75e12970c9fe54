//! The benchmark report: `BENCHMARKS.md`, from the interleaved ratios, the statement counts
//! and criterion's own estimates of the same run.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;
use std::process::Command;

/// One scenario timed in interleaved blocks.
pub struct Interleaved {
    pub group: String,
    /// Median of the rounds' ratios (library time over hand-written time).
    pub ratio: f64,
    pub low: f64,
    pub high: f64,
    /// Median time per call, in microseconds.
    pub sqlx_us: f64,
    pub lib_us: f64,
    /// Calls per block (per side).
    pub block: usize,
}

/// What each side of one scenario sent, through the counting proxy.
pub struct Counted {
    pub group: String,
    /// `(statements, round trips)`.
    pub sqlx: (u64, u64),
    pub lib: (u64, u64),
}

/// Everything the report is made of.
#[derive(Default)]
pub struct Report {
    pub interleaved: Vec<Interleaved>,
    pub counted: Vec<Counted>,
    /// `(database, version)`.
    pub servers: Vec<(&'static str, String)>,
    /// Criterion groups run, in order.
    pub groups: Vec<String>,
}

impl Report {
    /// Writes the report to `path`; `criterion` is criterion's output directory.
    pub fn write(&self, path: &Path, criterion: &Path, settings: &str) {
        let mut md = String::new();
        let _ = writeln!(md, "# Benchmarks\n");
        let _ = writeln!(
            md,
            "What `transactional` costs over the same work written by hand with sqlx, measured \
             in one run of `benches/run` (the code is `benches/overhead.rs` and \
             `benches/support.rs`). The ratio is the library's time over the hand-written \
             time: 1.00 is no overhead.\n"
        );
        let _ = writeln!(md, "## Machine\n");
        let _ = writeln!(
            md,
            "- date: {}",
            command("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
        );
        let _ = writeln!(md, "- cpu: {} × {}", cpu_count(), cpu_model());
        let _ = writeln!(md, "- rustc: {}", command("rustc", &["--version"]));
        for (database, version) in &self.servers {
            let _ = writeln!(md, "- {database}: {version}");
        }
        let _ = writeln!(md, "- {settings}\n");
        let _ = writeln!(md, "## Method\n");
        let _ = writeln!(
            md,
            "- **ratio**: each scenario is run in interleaved blocks (a block through the \
             library, then the same block by hand, the order alternating per round; a block \
             lasts about 100 ms). The ratio is the median of the rounds' ratios, with the \
             lowest and highest round in brackets. Interleaving keeps the two sides under the \
             same machine load, which drifts on a shared machine by more than the difference \
             sought.\n\
             - **criterion**: the mean time per call criterion measured for each side on its \
             own (`target/criterion/` has the full reports), a check on the ratio.\n\
             - **statements / round trips**: each side run once more through a TCP proxy that \
             counts the statements the client sends and the requests the server answers (pool \
             health checks left out). SQLite runs in-process: nothing to count on a wire; its \
             statements are those of `README.md`'s table.\n\
             - The hand-written side is what a careful sqlx user writes: `pool.begin()`, the \
             work, `commit()`; a savepoint by `Connection::begin` on the transaction; \
             `begin_with` for isolation and read-only where the database takes them in the \
             BEGIN, MySQL's `SET TRANSACTION` before it otherwise.\n"
        );
        let by_database = self.by_database();
        for (database, rows) in &by_database {
            let _ = writeln!(md, "## {database}\n");
            let _ = writeln!(
                md,
                "| scenario | ratio | sqlx µs | transactional µs | criterion sqlx µs | criterion transactional µs | statements sqlx / lib | round trips sqlx / lib |"
            );
            let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
            for group in rows {
                let scenario = group.split_once('.').map_or(group.as_str(), |(_, s)| s);
                let mut line = format!("| {scenario} |");
                match self.interleaved.iter().find(|i| &i.group == group) {
                    Some(i) => {
                        let _ = write!(
                            line,
                            " {:.3} [{:.2}–{:.2}] | {:.1} | {:.1} |",
                            i.ratio, i.low, i.high, i.sqlx_us, i.lib_us
                        );
                    }
                    None => line.push_str(" – | – | – |"),
                }
                for function in ["sqlx", "transactional"] {
                    match mean_us(criterion, group, function) {
                        Some(us) => {
                            let _ = write!(line, " {us:.1} |");
                        }
                        None => line.push_str(" – |"),
                    }
                }
                match self.counted.iter().find(|c| &c.group == group) {
                    Some(c) => {
                        let _ = write!(
                            line,
                            " {} / {} | {} / {} |",
                            c.sqlx.0, c.lib.0, c.sqlx.1, c.lib.1
                        );
                    }
                    None => line.push_str(" – | – |"),
                }
                let _ = writeln!(md, "{line}");
            }
            let _ = writeln!(md);
        }
        let cpu: Vec<_> = self
            .groups
            .iter()
            .filter(|g| g.starts_with("cpu."))
            .collect();
        if !cpu.is_empty() {
            let _ = writeln!(md, "## The runtime alone\n");
            let _ = writeln!(
                md,
                "A scope whose body sends nothing, against the same body awaited directly \
                 (criterion's mean per call; no database round trip).\n"
            );
            let _ = writeln!(md, "| chain | plain µs | transactional µs | per level µs |");
            let _ = writeln!(md, "|---|---|---|---|");
            for group in cpu {
                let depth: f64 = group
                    .rsplit('_')
                    .next()
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(1.0);
                let plain = mean_us(criterion, group, "plain");
                let lib = mean_us(criterion, group, "transactional");
                if let (Some(plain), Some(lib)) = (plain, lib) {
                    let _ = writeln!(
                        md,
                        "| {group} | {plain:.3} | {lib:.3} | {:.3} |",
                        (lib - plain) / depth
                    );
                }
            }
            let _ = writeln!(md);
        }
        // The sections of the other benches (benches/outbox.rs, benches/replicas.rs), each
        // starting with a `<!-- name: file -->` marker, stay after this report.
        let kept = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(at) = kept.find("\n<!-- ") {
            md = format!("{}\n\n{}", md.trim_end(), &kept[at..]);
        }
        std::fs::write(path, md).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        eprintln!("report written to {}", path.display());
    }

    /// The database groups, per database, in the order they ran.
    fn by_database(&self) -> BTreeMap<String, Vec<String>> {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let groups = self
            .groups
            .iter()
            .cloned()
            .chain(self.interleaved.iter().map(|i| i.group.clone()));
        for group in groups {
            if group.starts_with("cpu.") {
                continue;
            }
            let database = group.split('.').next().unwrap_or_default().to_owned();
            let rows = map.entry(database).or_default();
            if !rows.contains(&group) {
                rows.push(group);
            }
        }
        map
    }
}

/// Criterion's mean estimate for one function of a group, in microseconds.
fn mean_us(criterion: &Path, group: &str, function: &str) -> Option<f64> {
    let file = criterion
        .join(group)
        .join(function)
        .join("new")
        .join("estimates.json");
    let text = std::fs::read_to_string(file).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(json["mean"]["point_estimate"].as_f64()? / 1000.0)
}

fn command(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".to_owned())
}
