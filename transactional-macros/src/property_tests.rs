//! A property test of the whole macro ([`crate::expand::transactional`]): fed arbitrary
//! attribute arguments and arbitrary items, it never panics, and its output is one of two
//! things:
//!
//! - rejected: the item's tokens unchanged, followed by nothing but `::core::compile_error!`
//!   invocations, each with one message;
//! - expanded: no `compile_error!`, a body that calls the runtime's `__private` entry points,
//!   and, when the item was a syntactically valid fn, a file of exactly one fn that parses
//!   with `syn`, has the item's signature, attributes and visibility, and a new body.
//!
//! The inputs come from a seeded generator (splitmix64), no dependency needed: options with
//! valid and wrong values, unknown, duplicated and bare keys, stray separators and token
//! soup; fns of many shapes (methods, generics, patterns, aliases, `impl Trait`, qualifiers,
//! attributes) and items that are not fns. The seed is fixed unless `MACRO_PROP_SEED` is set;
//! a failure prints the seed, the case and its inputs, to be replayed or added to
//! [`REGRESSIONS`].

use std::panic::{catch_unwind, AssertUnwindSafe};

use proc_macro2::TokenStream;
use quote::ToTokens;

use crate::expand::transactional;
use crate::keys::{Key, ISOLATIONS, PROPAGATIONS};

const DEFAULT_SEED: u64 = 0x7a_c7_10_4a_15;
const CASES: usize = 8_000;

/// splitmix64: tiny, fast, and good enough to pick among alternatives.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// What the generator draws from, and the regression cases: data, so kept compact.
#[rustfmt::skip]
mod data {
/// Values of every kind, for any option: mostly wrong or invalid for it, some valid predicates.
pub(super) const WRONG: &[&str] = &[
    "5", "-5", "0", "-0", "1.5", "5u64", "101", "4294967296", "99999999999999999999", "0x10",
    "1_000", "1e3", "true", "false", "\"\"", "\" \"", "\"5x\"", "\"0ms\"", "\"5\"", "\"1.5s\"",
    "\"250ms\"", "\"18446744073709551615s\"", "\"REQUIRED\"", "\"required\"", "\"SNAPSHOT\"",
    "REQUIRES_NEW", "Propagation::RequiresNew", "<T as U>::f", "|e| e.ok()", "|e: &E| true",
    "foo::bar", "(5)", "[1, 2]", "{ 3 }", "'a'", "b\"x\"", "r\"raw\"", "c\"c\"", "b'x'", "!true",
    "x as u64", "async {}", "m!()", "Some(1)", "u32::MAX", "\"::\"", "\"a::b<T>\"", "\"Fn(u8)\"",
    "\"self\"", "\"crate::tx\"", "\"a b\"", "\"1abc\"", "\"{\"", "\"🦀\"", "\"\\u{0}\"",
    "a = b", "'l: loop {}", "S {}", "..", "-\"5s\"", "x as u64 < 5", "|| -> bool { true }",
    "return", "if x { y } else { z }", "match e { _ => true }", "move |e| true", "<E>::ok", "*p",
    "&f", "f::<E>", "e.0", "x?", "#[a] |e| true", "unsafe { f }", "const { f }", "Self::f",
    "super::f", "'l: {}", "async move |e| true", "static || 1", "for<'a> |e: &'a E| true",
];
pub(super) const UNKNOWN_KEYS: &[&str] = &[
    "foo", "readOnly", "rollback_for", "REQUIRES_NEW", "serializable", "timeout_ms", "isolaton",
    "r#propagation", "r#foo", "value", "Propagation", "r#crate_", "_", "self", "async",
];
/// Loose tokens: punctuation, literals of every kind, lifetimes, keywords.
pub(super) const TOKENS: &[&str] = &[
    ",", ",", "=", "==", "::", "#", "'a", ";", "@", "..", "->", "=>", "$", "?", "!", "&&", "-",
    "1", "1u8", "1.0f32", "\"s\"", "b'x'", "'c'", "r#\"raw\"#", "br\"b\"", "c\"c\"", "true",
    "timeout", "send", "local", "read_only", "crate", "fn", "async", "self", "Self", "r#type",
];
pub(super) const ATTRS: &[&str] = &[
    "/// Doc.", "/** Block doc. */", "#[must_use]", "#[cfg(test)]", "#[inline]",
    "#[allow(unused)]", "#[doc = \"x\"]", "#[tracing::instrument(skip(self))]",
    "#[transactional]",
];
pub(super) const VIS: &[&str] = &["", "", "pub ", "pub(crate) ", "pub(super) ", "pub(in crate::a) "];
pub(super) const QUALIFIERS: &[&str] = &["", "", "", "unsafe ", "extern \"C\" ", "unsafe extern \"C\" "];
pub(super) const NAMES: &[&str] = &["f", "save", "r#match", "r#type", "new", "_f", "café", "send"];
pub(super) const GENERICS: &[&str] = &[
    "", "", "", "<T>", "<T: Clone + Send>", "<'a, T: 'a>", "<T, const N: usize>",
    "<R: Repo + ?Sized>", "<'a>", "<F: Fn(&str) -> bool>",
];
pub(super) const RECEIVERS: &[&str] = &[
    "&self", "&mut self", "self", "mut self", "self: Box<Self>", "self: Arc<Self>", "&'a self",
];
pub(super) const PARAMS: &[&str] = &[
    "x: i32", "mut y: String", "(a, b): (i32, i32)", "_: u8", "repo: &impl Repo",
    "r: &dyn Repo", "t: T", "s: &'a str", "f: impl Fn(i32) -> i32", "Wrapper(w): Wrapper",
    "ref z: u8", "[p, q]: [u8; 2]", "order: NewOrder",
];
pub(super) const RETURNS: &[&str] = &[
    "Result<(), E>", "Result<i32, AppError>", "AppResult<()>", "io::Result<Vec<u8>>",
    "std::result::Result<Self, Box<dyn Error + Send + Sync>>", "anyhow::Result<impl Display>",
    "Result<impl Iterator<Item = u8>, E>", "impl Future<Output = Result<(), E>>", "()",
    "Option<i32>", "Self", "<T as Tr>::Out", "fn() -> Result<(), E>", "&'a str", "!", "_",
    "[u8; 4]", "(i32, E)", "dyn Tr", "Result<T, E>",
];
pub(super) const WHERES: &[&str] = &[
    "", "", "", "where T: Clone", "where Self: Sized", "where for<'b> F: Fn(&'b str)",
];
/// Statements, and some tokens that are not (the macro does not parse the body).
pub(super) const BODIES: &[&str] = &[
    "Ok(())", "Ok(x)", "let v = 1; Ok(v)", "return Err(E);", "self.repo.save().await?; Ok(())",
    "todo!()", "loop {}", "", "async {}.await; Ok(())", "match 1 { _ => Ok(()) }", "{ Ok(()) }",
    "let = ;", "@ @", ", ,", "fn",
];
pub(super) const NOT_FNS: &[&str] = &[
    "", "struct S;", "struct S { x: i32 }", "enum E { A }", "union U { a: u8 }",
    "trait T { async fn f(&self) -> Result<(), E>; }", "mod m {}", "const C: u8 = 1;",
    "static S: u8 = 1;", "type R = Result<(), E>;", "use a::b;", "extern crate x;",
    "impl S { async fn f(&self) -> Result<(), E> { Ok(()) } }", "macro_rules! m { () => {} }",
    "m!();", "1 + 2", "let x = 1;", "async fn f() -> Result<(), E>;", "fn", "async", "{}", "|x| x",
];
pub(super) const SEPARATORS: &[&str] = &[", ", ", ", ", ", ", ", ", ", ",, ", " ", "; ", " = "];
pub(super) const LEADING: &[&str] = &["", "", "", "", "", "", "", "", ", "];
/// Valid values of the options other than `propagation` and `isolation` (`""`: bare key).
pub(super) const VALID: &[(&str, &[&str])] = &[
    ("read_only", &["", "true", "false"]), ("timeout", &["5", "1", "\"250ms\"", "\"5s\"", "\"2m\""]),
    ("data_source", &["\"reporting\"", "\"default\""]), ("retry", &["1", "3", "100"]),
    ("no_rollback_for", &["AppError::is_benign", "|e| e.is_benign()", "|e: &E| false"]),
    ("send", &[""]), ("local", &[""]), ("crate", &["\"::transactional\"", "\"my::tx\"", "\"crate\""]),
];
/// Edge cases worth keeping whatever the seed: (args, item). The first ten are rejected, the
/// others expand into code that parses.
pub(super) const REGRESSIONS: &[(&str, &str)] = &[
    ("", ""),
    ("crate = \"a::b<T>\"", "async fn f() -> Result<(), E> { Ok(()) }"), // was invalid code
    ("crate = \"Fn(u8)\"", "async fn f() -> Result<(), E> { Ok(()) }"),
    ("timeout = 99999999999999999999", "async fn f() -> R { Ok(()) }"),
    ("retry = 4294967296", "async fn f() -> R { Ok(()) }"),
    // was emitted without its inner attribute
    ("retry = 3", "async fn f((a, b): (i32, i32)) -> R { #![allow(unused)] Ok(()) }"),
    ("send, local, send", "async fn f() -> R { Ok(()) }"),
    ("propagation = \"NEVER\", timeout = 5, read_only, retry = 2", "fn f() {}"),
    ("data_source = \" \", crate = \"::\"", "const async fn f() {}"),
    (",", "async fn f() -> R { Ok(()) } struct S;"),
    ("", "async fn f() -> Result<(), E> { Ok(()) }"),
    ("timeout = \"18446744073709551615ms\"", "async fn f() -> R { Ok(()) }"),
    ("retry = 3", "async fn f(self: Box<Self>, mut x: u8) -> R { #![allow(unused)] Ok(x) }"),
    ("r#propagation = \"NESTED\", r#send", "async fn r#match(&self) -> R { Ok(()) }"),
    ("no_rollback_for = a = b", "async fn f() -> impl Future<Output = R> { x }"),
];
}
use data::*;

/// One valid `key = value` (or bare key).
fn valid_option(rng: &mut Rng, key: Key) -> String {
    let value = match key {
        Key::Propagation => format!("{:?}", PROPAGATIONS[rng.below(PROPAGATIONS.len())].0),
        Key::Isolation => format!("{:?}", ISOLATIONS[rng.below(ISOLATIONS.len())].0),
        _ => rng
            .pick(VALID.iter().find(|(k, _)| *k == key.name()).unwrap().1)
            .to_string(),
    };
    match value.as_str() {
        "" => key.name().to_string(),
        value => format!("{} = {value}", key.name()),
    }
}

/// Random tokens from [`TOKENS`] and [`WRONG`], with nested groups.
fn soup(rng: &mut Rng, len: usize, depth: usize) -> String {
    let mut out = Vec::new();
    for _ in 0..len {
        out.push(match rng.below(10) {
            0 if depth < 3 => {
                let len = rng.below(4);
                let inner = soup(rng, len, depth + 1);
                let (open, close) = [("(", ")"), ("[", "]"), ("{", "}")][rng.below(3)];
                format!("{open}{inner}{close}")
            }
            1 => rng.pick(WRONG).to_string(),
            _ => rng.pick(TOKENS).to_string(),
        });
    }
    out.join(" ")
}

/// The attribute's arguments: most of them clean option lists, the others mangled.
fn args(rng: &mut Rng) -> String {
    let mut entries: Vec<String> = Vec::new();
    if rng.percent(60) {
        for key in Key::ALL {
            if rng.percent(25) {
                entries.push(valid_option(rng, key));
            }
        }
        return entries.join(", ");
    }
    if rng.percent(10) {
        let len = rng.below(12);
        return soup(rng, len, 0);
    }
    for _ in 0..rng.below(6) + 1 {
        let key = Key::ALL[rng.below(Key::ALL.len())];
        entries.push(match rng.below(10) {
            0..=2 => valid_option(rng, key),
            3 | 4 => format!("{} = {}", key.name(), rng.pick(WRONG)),
            5 => format!("{} = {}", rng.pick(UNKNOWN_KEYS), rng.pick(WRONG)),
            6 => rng.pick(UNKNOWN_KEYS).to_string(),
            7 => format!("{} {}", key.name(), rng.pick(WRONG)), // no `=`
            8 => soup(rng, 3, 1),
            _ => entries.last().cloned().unwrap_or_default(), // a duplicate
        });
    }
    // Mostly one comma between entries; sometimes one before the first, or after the last.
    let mut out = String::new();
    for (i, entry) in entries.iter().enumerate() {
        let separators = if i == 0 { LEADING } else { SEPARATORS };
        out = format!("{out}{}{entry}", rng.pick(separators));
    }
    out + rng.pick(LEADING)
}

/// The item: mostly `async fn`s of many shapes, then fns the attribute rejects, other items
/// and token soup.
fn item(rng: &mut Rng) -> String {
    match rng.below(25) {
        0 | 1 => return rng.pick(NOT_FNS).to_string(),
        2 => {
            let len = rng.below(10);
            return soup(rng, len, 0);
        }
        _ => {}
    }
    let mut attrs = String::new();
    for _ in 0..rng.below(3) {
        attrs = format!("{attrs}{}\n", rng.pick(ATTRS));
    }
    let mut params: Vec<&str> = Vec::new();
    if rng.percent(40) {
        params.push(rng.pick(RECEIVERS));
    }
    for _ in 0..rng.below(4) {
        params.push(rng.pick(PARAMS));
    }
    let (mut asyncness, mut ret) = ("async ", format!(" -> {}", rng.pick(RETURNS)));
    let inner = rng.pick(&["#![allow(unused)]", "", "", "", "", "", "", "", "", ""]);
    let (mut body, mut trailing) = (format!("{{ {inner} {} }}", rng.pick(BODIES)), "");
    match rng.below(24) {
        0 => asyncness = "",
        1 => asyncness = "const async ",
        2 => asyncness = rng.pick(&["async const ", "default async ", "async async "]),
        3 => ret.clear(),
        4 => body = ";".to_string(),
        5 => trailing = rng.pick(&["struct S;", "fn g() {}", ";", "#[x]"]),
        _ => {}
    }
    format!(
        "{attrs}{}{asyncness}{}fn {}{}({}){ret} {} {body}{trailing}",
        rng.pick(VIS),
        rng.pick(QUALIFIERS),
        rng.pick(NAMES),
        rng.pick(GENERICS),
        params.join(", "),
        rng.pick(WHERES),
    )
}

#[derive(Debug, Default)]
struct Stats {
    unlexable: usize,
    rejected: usize,
    expanded: usize,
    /// Expanded from a syntactically valid fn, and checked to parse.
    parsed: usize,
}

/// Each token tree's text without whitespace: the comparison ignores spacing (`Joint`-ness),
/// which re-printing a parsed fn does not keep.
fn squash(tokens: impl IntoIterator<Item = impl ToString>) -> Vec<String> {
    let squash = |t: &dyn ToString| t.to_string().split_whitespace().collect();
    tokens.into_iter().map(|t| squash(&t)).collect()
}

/// Runs the macro on one case and checks the property; `Err` says how it failed.
fn check(args: &str, item: &str, stats: &mut Stats) -> Result<(), String> {
    let args_text = args;
    let (Ok(args), Ok(item)) = (args.parse::<TokenStream>(), item.parse::<TokenStream>()) else {
        stats.unlexable += 1;
        return Ok(());
    };
    let run = || transactional(args, item.clone());
    let out = catch_unwind(AssertUnwindSafe(run)).map_err(|payload| {
        let message = payload.downcast_ref::<&str>().map(|s| s.to_string());
        let message = message.or_else(|| payload.downcast_ref::<String>().cloned());
        format!("the macro panicked: {}", message.unwrap_or_default())
    })?;
    let text = out.to_string();
    let (item_tokens, out_tokens) = (squash(item.clone()), squash(out.clone()));
    if text.contains("compile_error") {
        stats.rejected += 1;
        let (head, rest) = out_tokens.split_at(item_tokens.len().min(out_tokens.len()));
        if head != item_tokens {
            return Err(format!(
                "rejected, but the item is not kept as it was:\n{text}"
            ));
        }
        // `::core::compile_error! { "..." }`: `:` `:` `core` `:` `:` `compile_error` `!` `{...}`
        let one_error = |e: &[String]| {
            e[..7].concat() == "::core::compile_error!"
                && syn::parse_str::<syn::LitStr>(e[7].trim_matches(['{', '}'])).is_ok()
        };
        if rest.is_empty() || rest.len() % 8 != 0 || !rest.chunks(8).all(one_error) {
            return Err(format!(
                "rejected, but not with compile_error!s only:\n{text}"
            ));
        }
        return Ok(());
    }
    stats.expanded += 1;
    if !text.contains("__private") || !text.contains(". await") || out_tokens == item_tokens {
        return Err(format!("neither rejected nor rewritten:\n{text}"));
    }
    let Ok(input) = syn::parse2::<syn::ItemFn>(item) else {
        return Ok(()); // the body is not Rust: the macro keeps it as tokens, rustc reports it
    };
    let file = syn::parse2::<syn::File>(out).map_err(|e| format!("invalid code ({e}):\n{text}"))?;
    let [syn::Item::Fn(output)] = &file.items[..] else {
        return Err(format!("expanded into something else than one fn:\n{text}"));
    };
    // The signature as written; with `retry`, as a caller sees it: `retry` drops a
    // parameter's `mut` (each attempt's clone is the binding the body mutates), which changes
    // nothing outside the fn.
    let retrying = args_text.contains("retry");
    let parts = |f: &syn::ItemFn| {
        let mut sig = f.sig.clone();
        for input in sig.inputs.iter_mut().filter(|_| retrying) {
            if let syn::FnArg::Typed(arg) = input {
                if let syn::Pat::Ident(ident) = &mut *arg.pat {
                    ident.mutability = None;
                }
            }
        }
        let sig = [f.vis.to_token_stream(), sig.to_token_stream()];
        let attrs = f.attrs.iter().map(ToTokens::to_token_stream);
        squash(sig.into_iter().chain(attrs))
    };
    let body = |f: &syn::ItemFn| squash([f.block.to_token_stream()]);
    if parts(&input) != parts(output) || body(&input) == body(output) {
        return Err(format!(
            "another signature or attributes, or the same body:\n{text}"
        ));
    }
    stats.parsed += 1;
    Ok(())
}

fn seed() -> u64 {
    let Ok(seed) = std::env::var("MACRO_PROP_SEED") else {
        return DEFAULT_SEED;
    };
    match seed.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => seed.parse(),
    }
    .expect("MACRO_PROP_SEED must be a u64, decimal or 0x-hex")
}

/// Generates and checks `cases` cases; each case's inputs depend only on the seed and the
/// case's index.
fn run(seed: u64, cases: usize) -> Stats {
    let mut stats = Stats::default();
    for case in 0..cases {
        let mut rng = Rng(seed ^ (case as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        let (args, item) = (args(&mut rng), item(&mut rng));
        if let Err(failure) = check(&args, &item, &mut stats) {
            panic!(
                "{failure}\n\ncase {case} of seed {seed:#x} (replay: MACRO_PROP_SEED={seed:#x})\n\
                 args: {args}\nitem: {item}"
            );
        }
    }
    stats
}

#[test]
fn regressions() {
    let mut stats = Stats::default();
    for (args, item) in REGRESSIONS {
        if let Err(failure) = check(args, item, &mut stats) {
            panic!("{failure}\n\nargs: {args}\nitem: {item}");
        }
    }
    let counts = (stats.unlexable, stats.rejected, stats.parsed);
    assert_eq!(counts, (0, 10, REGRESSIONS.len() - 10), "{stats:?}");
}

/// Each value of [`WRONG`] under each option, alone and after a valid one, on a method and on
/// a free fn: wrong for most options, a valid predicate for `no_rollback_for`.
#[test]
fn every_value_under_every_option() {
    let mut stats = Stats::default();
    for key in Key::ALL.map(Key::name) {
        for value in WRONG {
            for args in [
                format!("{key} = {value}"),
                format!("retry = 2, {key} = {value}"),
            ] {
                for item in [
                    "async fn f(x: u8) -> R { x }",
                    "async fn f(&self) -> R { 1 }",
                ] {
                    if let Err(failure) = check(&args, item, &mut stats) {
                        panic!("{failure}\n\nargs: {args}\nitem: {item}");
                    }
                }
            }
        }
    }
    assert!(stats.parsed > 50, "{stats:?}");
}

#[test]
fn never_panics_and_emits_an_error_or_valid_code() {
    let stats = run(seed(), CASES);
    eprintln!("{CASES} cases: {stats:?}");
}

/// The generator keeps reaching both outcomes, so that the property cannot quietly come down
/// to checking error messages only (or expansions only).
#[test]
fn the_generator_mixes_errors_and_expansions() {
    let cases = 2_000;
    let stats = run(seed(), cases);
    let share = |n: usize| n * 100 / cases;
    assert!(share(stats.expanded) >= 20, "{stats:?}");
    assert!(share(stats.parsed) >= 15, "{stats:?}");
    assert!(share(stats.rejected) >= 20, "{stats:?}");
    assert!(share(stats.unlexable) <= 5, "{stats:?}");
}
