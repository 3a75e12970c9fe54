//! Parsing and validation: the attribute's options and the fn it is put on.
//!
//! Nothing here emits code; [`crate::expand`] turns a validated [`TxArgs`] and [`TxFn`] into
//! the rewritten fn. Every problem is reported as a `syn::Error` on the offending tokens, and
//! as many problems as possible are collected before giving up, so a user fixes them in one go.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::spanned::Spanned;
use syn::{
    braced, Attribute, Expr, ExprLit, ExprUnary, Ident, Lit, LitBool, LitStr, Path, ReturnType,
    Signature, Token, UnOp, Visibility,
};

/// The option keys, in the order the docs and error messages list them.
pub(crate) const KEYS: &[&str] = &[
    "propagation",
    "isolation",
    "read_only",
    "timeout",
    "data_source",
    "no_rollback_for",
    "send",
    "local",
    "crate",
];

/// Spring's spelling of each propagation mode and the runtime's variant for it.
pub(crate) const PROPAGATIONS: &[(&str, &str)] = &[
    ("REQUIRED", "Required"),
    ("REQUIRES_NEW", "RequiresNew"),
    ("NESTED", "Nested"),
    ("SUPPORTS", "Supports"),
    ("NOT_SUPPORTED", "NotSupported"),
    ("MANDATORY", "Mandatory"),
    ("NEVER", "Never"),
];

/// Spring's spelling of each isolation level and the runtime's variant for it.
pub(crate) const ISOLATIONS: &[(&str, &str)] = &[
    ("READ_UNCOMMITTED", "ReadUncommitted"),
    ("READ_COMMITTED", "ReadCommitted"),
    ("REPEATABLE_READ", "RepeatableRead"),
    ("SERIALIZABLE", "Serializable"),
    ("DEFAULT", "Default"),
];

/// What a bad timeout is told, after the offending value.
const TIMEOUT_EXPECTED: &str =
    "expected a positive number of seconds (`timeout = 5`) or a string like \"500ms\", \"5s\", \"2m\"";

/// The validated options of one `#[transactional(...)]`.
///
/// A field is `Some` exactly when the option was written, so that only those setters are
/// emitted and everything else keeps the runtime's defaults.
#[derive(Default)]
pub(crate) struct TxArgs {
    /// The `Propagation` variant, spanned at the string literal.
    pub(crate) propagation: Option<Ident>,
    /// The `Isolation` variant, spanned at the string literal.
    pub(crate) isolation: Option<Ident>,
    /// `read_only` / `read_only = bool`.
    pub(crate) read_only: Option<LitBool>,
    /// The timeout in milliseconds, and the span of the value it came from.
    pub(crate) timeout_ms: Option<(u64, Span)>,
    /// The data source's name.
    pub(crate) data_source: Option<LitStr>,
    /// The predicate for `run_with_no_rollback_for`.
    pub(crate) no_rollback_for: Option<Expr>,
    /// The path to the `transactional` crate, when not `::transactional`.
    pub(crate) krate: Option<Path>,
    /// `send` (`Some(true)`): the body is `Send` and its type is erased; `local`
    /// (`Some(false)`): it keeps its own type; `None`: decided from the signature.
    pub(crate) send: Option<(bool, Span)>,
}

impl TxArgs {
    /// Parses and validates the attribute's arguments (the tokens inside the parentheses).
    pub(crate) fn parse(args: TokenStream) -> syn::Result<TxArgs> {
        Parser::parse2(parse_args, args)
    }
}

/// One `key` or `key = value` as written, before validation.
struct RawOption {
    key: Ident,
    value: Option<Expr>,
}

fn parse_args(input: ParseStream) -> syn::Result<TxArgs> {
    let mut raw = Vec::new();
    while !input.is_empty() {
        let key = if input.peek(Ident::peek_any) {
            input.call(Ident::parse_any)?
        } else {
            if let Ok(lit) = input.fork().parse::<LitStr>() {
                if let Some(hint) = value_used_as_key(&lit.value()) {
                    return Err(input.error(format!("expected an option name; {hint}")));
                }
            }
            return Err(input.error(
                "expected an option like `propagation = \"REQUIRES_NEW\"` or `read_only`; \
                 see the #[transactional] docs for the full list",
            ));
        };
        let value = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            Some(input.parse::<Expr>()?)
        } else {
            None
        };
        raw.push(RawOption { key, value });
        if input.is_empty() {
            break;
        }
        if !input.peek(Token![,]) {
            return Err(input.error("expected `,` between #[transactional] options"));
        }
        input.parse::<Token![,]>()?;
    }

    let mut args = TxArgs::default();
    let mut errors = Errors::default();
    let mut seen: Vec<String> = Vec::new();
    for RawOption { key, value } in raw {
        let name = key.unraw().to_string();
        if !KEYS.contains(&name.as_str()) {
            errors.push(syn::Error::new(key.span(), unknown_key_message(&name)));
            continue;
        }
        if seen.contains(&name) {
            errors.push(syn::Error::new(
                key.span(),
                format!("duplicate option `{name}`: give each #[transactional] option once"),
            ));
            continue;
        }
        seen.push(name.clone());
        if let Err(e) = apply(&mut args, &key, &name, value) {
            errors.push(e);
        }
    }
    if let Err(e) = never_begins_check(&args) {
        errors.push(e);
    }
    errors.finish()?;
    Ok(args)
}

/// Isolation, read-only and a timeout belong to a transaction the scope begins: with a
/// propagation that never begins one, they could never apply.
fn never_begins_check(args: &TxArgs) -> syn::Result<()> {
    let Some(propagation) = &args.propagation else {
        return Ok(());
    };
    let spring = match propagation.to_string().as_str() {
        "Supports" => "SUPPORTS",
        "NotSupported" => "NOT_SUPPORTED",
        "Never" => "NEVER",
        _ => return Ok(()),
    };
    let offending = [
        args.isolation
            .as_ref()
            .filter(|i| *i != "Default")
            .map(|i| ("isolation", i.span())),
        args.read_only
            .as_ref()
            .filter(|b| b.value)
            .map(|b| ("read_only", b.span())),
        args.timeout_ms.map(|(_, span)| ("timeout", span)),
    ];
    let mut errors = Errors::default();
    for (option, span) in offending.into_iter().flatten() {
        errors.push(syn::Error::new(
            span,
            format!(
                "`{option}` applies to a transaction the scope begins, and propagation \
                 \"{spring}\" never begins one: remove `{option}`, or use \"REQUIRED\" or \
                 \"REQUIRES_NEW\""
            ),
        ));
    }
    errors.finish()
}

/// Validates one known option and stores it.
fn apply(args: &mut TxArgs, key: &Ident, name: &str, value: Option<Expr>) -> syn::Result<()> {
    let Some(value) = value else {
        if name == "read_only" {
            args.read_only = Some(LitBool::new(true, key.span()));
            return Ok(());
        }
        if name == "local" || name == "send" {
            if let Some((_, first)) = args.send {
                let mut error = syn::Error::new(
                    key.span(),
                    "`send` and `local` contradict each other: give one of them",
                );
                error.combine(syn::Error::new(first, "the other one is here"));
                return Err(error);
            }
            args.send = Some((name == "send", key.span()));
            return Ok(());
        }
        return Err(syn::Error::new(
            key.span(),
            format!("option `{name}` needs a value: write `{}`", example(name)),
        ));
    };
    let value = ungroup(value);
    match name {
        "propagation" => {
            args.propagation = Some(enum_value(&value, "propagation", PROPAGATIONS)?);
        }
        "isolation" => {
            args.isolation = Some(enum_value(&value, "isolation", ISOLATIONS)?);
        }
        "read_only" => match &value {
            Expr::Lit(ExprLit {
                lit: Lit::Bool(b), ..
            }) => args.read_only = Some(b.clone()),
            other => {
                return Err(syn::Error::new_spanned(
                    other,
                    "`read_only` takes `true` or `false` (or write just `read_only`)",
                ))
            }
        },
        "timeout" => args.timeout_ms = Some((timeout_value(&value)?, value.span())),
        "data_source" => {
            let lit = string_value(&value, "data_source")?;
            if lit.value().trim().is_empty() {
                return Err(syn::Error::new(
                    lit.span(),
                    "`data_source` must not be empty: give the name the pool was registered \
                     under, or leave the option out for the default data source",
                ));
            }
            args.data_source = Some(lit);
        }
        "no_rollback_for" => {
            if let Expr::Lit(lit) = &value {
                return Err(syn::Error::new_spanned(
                    lit,
                    "`no_rollback_for` takes a predicate on the error, not a literal: a path to \
                     a `fn(&E) -> bool` or a closure like \
                     `|e: &AppError| matches!(e, AppError::NotFound)`",
                ));
            }
            args.no_rollback_for = Some(value);
        }
        "local" | "send" => {
            return Err(syn::Error::new_spanned(
                value,
                format!("`{name}` takes no value: write just `{name}`"),
            ))
        }
        "crate" => {
            let lit = string_value(&value, "crate")?;
            let path = lit.parse::<Path>().map_err(|_| {
                syn::Error::new(
                    lit.span(),
                    format!(
                        "`crate` must be a path to the transactional crate, like \
                         `crate = \"::transactional\"`; {:?} is not a path",
                        lit.value()
                    ),
                )
            })?;
            args.krate = Some(path);
        }
        _ => unreachable!("every key in KEYS is handled"),
    }
    Ok(())
}

/// How each option is written, for "needs a value" and "expected a string literal" hints.
fn example(name: &str) -> &'static str {
    match name {
        "propagation" => "propagation = \"REQUIRES_NEW\"",
        "isolation" => "isolation = \"SERIALIZABLE\"",
        "read_only" => "read_only = true",
        "timeout" => "timeout = 5",
        "data_source" => "data_source = \"reporting\"",
        "no_rollback_for" => "no_rollback_for = AppError::is_not_found",
        "send" => "send",
        "local" => "local",
        _ => "crate = \"::transactional\"",
    }
}

/// Looks through invisible groups (values passed in through `macro_rules!` fragments).
fn ungroup(mut expr: Expr) -> Expr {
    while let Expr::Group(group) = expr {
        expr = *group.expr;
    }
    expr
}

/// The string literal an option requires, or an error saying so.
fn string_value(value: &Expr, option: &str) -> syn::Result<LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s.clone()),
        other => Err(syn::Error::new_spanned(
            other,
            format!(
                "`{option}` takes a string literal: write `{}`",
                example(option)
            ),
        )),
    }
}

/// Maps a Spring spelling (`"REQUIRES_NEW"`) to the runtime's variant (`RequiresNew`).
fn enum_value(value: &Expr, option: &str, table: &[(&str, &str)]) -> syn::Result<Ident> {
    let spellings: Vec<&str> = table.iter().map(|(spring, _)| *spring).collect();
    let lit = match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => s.clone(),
        Expr::Path(p) if p.qself.is_none() && !p.path.segments.is_empty() => {
            // `propagation = REQUIRES_NEW` or `propagation = Propagation::RequiresNew`.
            let last = p.path.segments.last().map(|s| s.ident.unraw().to_string());
            let written = last.unwrap_or_default();
            let fix = suggest(&written, &spellings, true).unwrap_or(spellings[0]);
            return Err(syn::Error::new_spanned(
                value,
                format!("`{option}` takes a string literal: write `{option} = \"{fix}\"`"),
            ));
        }
        other => {
            return Err(syn::Error::new_spanned(
                other,
                format!(
                    "`{option}` takes a string literal: write `{}`",
                    example(option)
                ),
            ))
        }
    };
    let written = lit.value();
    match table.iter().find(|(spring, _)| *spring == written) {
        Some((_, variant)) => Ok(Ident::new(variant, lit.span())),
        None => {
            let hint = match suggest(&written, &spellings, true) {
                Some(s) => format!("; did you mean \"{s}\"?"),
                None => ";".to_string(),
            };
            Err(syn::Error::new(
                lit.span(),
                format!(
                    "unknown {option} {written:?}{hint} expected one of: {}",
                    quoted_list(&spellings)
                ),
            ))
        }
    }
}

fn quoted_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The message for an option name that is not one of [`KEYS`].
pub(crate) fn unknown_key_message(written: &str) -> String {
    let hint = match key_alias(written) {
        Some(hint) => format!("; {hint}"),
        None => match suggest(written, KEYS, false) {
            Some(key) => format!("; did you mean `{key}`?"),
            None => match value_used_as_key(written) {
                Some(hint) => format!("; {hint}"),
                None => String::new(),
            },
        },
    };
    // "...; did you mean `x`? expected one of: ..." but "...; <advice>; expected one of: ..."
    let separator = if hint.ends_with('?') { "" } else { ";" };
    format!(
        "unknown option `{written}` for #[transactional]{hint}{separator} expected one of: {}",
        KEYS.join(", ")
    )
}

/// Hints for names people bring from Spring's `@Transactional`.
fn key_alias(written: &str) -> Option<&'static str> {
    match normalize(written).as_str() {
        "rollbackfor" | "rollbackforclassname" => Some(
            "every `Err` already rolls back; to commit on some errors instead, use \
             `no_rollback_for = <predicate>`",
        ),
        "norollbackforclassname" => Some("did you mean `no_rollback_for`?"),
        "value" | "transactionmanager" | "datasourcename" => Some("did you mean `data_source`?"),
        "isolationlevel" | "level" => Some("did you mean `isolation`?"),
        "timeoutsecs" | "timeoutseconds" | "timeoutms" | "timeoutmillis" => Some(
            "did you mean `timeout`? it takes seconds (`timeout = 5`) or a string like \"500ms\"",
        ),
        _ => None,
    }
}

/// `#[transactional(REQUIRES_NEW)]`: a value written where an option name belongs.
fn value_used_as_key(written: &str) -> Option<String> {
    let upper = written.to_uppercase();
    if let Some((spring, _)) = PROPAGATIONS.iter().find(|(s, _)| *s == upper) {
        return Some(format!("did you mean `propagation = \"{spring}\"`?"));
    }
    if let Some((spring, _)) = ISOLATIONS.iter().find(|(s, _)| *s == upper) {
        return Some(format!("did you mean `isolation = \"{spring}\"`?"));
    }
    None
}

/// Lower-cases and drops `_`, `-` and spaces: `readOnly`, `read-only` and `READ_ONLY` all
/// become `readonly`.
fn normalize(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '_' | '-' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The candidate `written` most likely meant, if any is close enough.
///
/// A candidate that differs only in case and separators wins outright (`"required"`,
/// `readOnly`, `RequiresNew`); otherwise the nearest by edit distance, compared in the
/// candidates' case when `upper` (the Spring constants), if within a third of its length.
pub(crate) fn suggest<'a>(written: &str, candidates: &[&'a str], upper: bool) -> Option<&'a str> {
    let norm = normalize(written);
    if let Some(c) = candidates.iter().find(|c| normalize(c) == norm) {
        return Some(c);
    }
    let cased = if upper {
        written.to_uppercase()
    } else {
        written.to_lowercase()
    };
    candidates
        .iter()
        .map(|c| (levenshtein(&cased, c), *c))
        .filter(|(d, c)| *d <= (c.chars().count() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// The edit distance (insertions, deletions, substitutions) between two strings.
pub(crate) fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Validates a `timeout = ...` value and returns it in milliseconds.
fn timeout_value(value: &Expr) -> syn::Result<u64> {
    let invalid = |detail: &str| {
        let shown = value.to_token_stream().to_string().replace("- ", "-");
        syn::Error::new_spanned(
            value,
            format!("invalid timeout `{shown}`{detail}: {TIMEOUT_EXPECTED}"),
        )
    };
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => {
            if !int.suffix().is_empty() {
                return Err(invalid(
                    " (write whole seconds without a suffix, or a string with a unit like \"500ms\")",
                ));
            }
            let secs: u64 = int.base10_parse().map_err(|_| invalid(" (too large)"))?;
            if secs == 0 {
                return Err(invalid(" (it must be greater than zero)"));
            }
            secs.checked_mul(1000)
                .ok_or_else(|| invalid(" (too large)"))
        }
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => parse_duration_ms(&s.value()).map_err(|detail| {
            syn::Error::new(
                s.span(),
                format!(
                    "invalid timeout {:?}{detail}: {TIMEOUT_EXPECTED}",
                    s.value()
                ),
            )
        }),
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_), ..
        }) => Err(invalid(" (it must be greater than zero)")),
        Expr::Lit(ExprLit {
            lit: Lit::Float(_), ..
        }) => Err(invalid(
            " (fractions of a second are written in ms, like \"1500ms\")",
        )),
        _ => Err(invalid("")),
    }
}

/// Parses `"250ms"`, `"5s"`, `"2m"` into milliseconds; the error is a detail for the message.
pub(crate) fn parse_duration_ms(s: &str) -> Result<u64, &'static str> {
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits_end);
    if number.is_empty() {
        return Err("");
    }
    let factor: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "" => return Err(" (the string needs a unit: ms, s or m)"),
        _ => return Err(" (the unit must be ms, s or m)"),
    };
    let n: u64 = number.parse().map_err(|_| " (too large)")?;
    if n == 0 {
        return Err(" (it must be greater than zero)");
    }
    n.checked_mul(factor).ok_or(" (too large)")
}

/// Collects errors so that all of them are reported at once.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub(crate) fn finish(self) -> syn::Result<()> {
        match self.0 {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The fn the attribute is on, with its body kept as unparsed tokens.
///
/// The body is not parsed: rustc reports its syntax errors itself, with better messages, and
/// the macro stays fast on large bodies.
pub(crate) struct TxFn {
    /// Outer attributes, doc comments included, in order.
    pub(crate) attrs: Vec<Attribute>,
    pub(crate) vis: Visibility,
    pub(crate) sig: Signature,
    /// `#![...]` attributes at the top of the body; they stay on the fn.
    pub(crate) inner_attrs: Vec<Attribute>,
    /// The statements of the body.
    pub(crate) body: TokenStream,
    /// The span of the body's braces.
    pub(crate) brace_span: Span,
}

impl TxFn {
    /// Parses the item and checks it is something the attribute can rewrite.
    pub(crate) fn parse(item: TokenStream) -> syn::Result<TxFn> {
        let parsed = Parser::parse2(parse_fn, item.clone());
        let f = match parsed {
            Ok(Some(f)) => f,
            Ok(None) => return Err(not_a_fn(item)),
            Err(e) => return Err(e),
        };
        f.validate()?;
        Ok(f)
    }

    fn validate(&self) -> syn::Result<()> {
        let mut errors = Errors::default();
        if let Some(c) = &self.sig.constness {
            errors.push(syn::Error::new(
                c.span,
                "#[transactional] cannot be applied to a `const fn`: it needs an `async fn`",
            ));
        } else if self.sig.asyncness.is_none() {
            errors.push(syn::Error::new(
                self.sig.fn_token.span,
                "#[transactional] requires an `async fn`: beginning and committing a \
                 transaction awaits the database",
            ));
        }
        if let Err(e) = check_return_type(&self.sig) {
            errors.push(e);
        }
        errors.finish()
    }
}

/// `Ok(None)` when the tokens are an item but not a fn; a fn without a body is an error here.
fn parse_fn(input: ParseStream) -> syn::Result<Option<TxFn>> {
    let attrs = input.call(Attribute::parse_outer)?;
    let vis: Visibility = input.parse()?;
    let fork = input.fork();
    if fork.parse::<Signature>().is_err() {
        // not a fn at all: let the caller name what it is
        let _: TokenStream = input.parse()?;
        return Ok(None);
    }
    let sig: Signature = input.parse()?;
    if input.peek(Token![;]) {
        return Err(syn::Error::new_spanned(
            &sig,
            "#[transactional] needs the fn's body: put it on the `async fn` in the impl, not on \
             the declaration in the trait",
        ));
    }
    let content;
    let brace = braced!(content in input);
    let inner_attrs = content.call(Attribute::parse_inner)?;
    let body: TokenStream = content.parse()?;
    if !input.is_empty() {
        return Err(input.error("unexpected tokens after the fn"));
    }
    Ok(Some(TxFn {
        attrs,
        vis,
        sig,
        inner_attrs,
        body,
        brace_span: brace.span.join(),
    }))
}

/// The error for an item that is not a fn, pointing at its keyword and name.
fn not_a_fn(item: TokenStream) -> syn::Error {
    let generic = "#[transactional] applies to an `async fn` only: put it on each async fn \
                   whose body should run in a transaction";
    let Ok(item) = syn::parse2::<syn::Item>(item) else {
        return syn::Error::new(Span::call_site(), generic);
    };
    fn head(keyword: impl ToTokens, ident: &Ident) -> TokenStream {
        let mut tokens = keyword.to_token_stream();
        ident.to_tokens(&mut tokens);
        tokens
    }
    let (what, head) = match &item {
        syn::Item::Struct(i) => ("a struct", head(i.struct_token, &i.ident)),
        syn::Item::Enum(i) => ("an enum", head(i.enum_token, &i.ident)),
        syn::Item::Union(i) => ("a union", head(i.union_token, &i.ident)),
        syn::Item::Trait(i) => ("a trait", head(i.trait_token, &i.ident)),
        syn::Item::Mod(i) => ("a module", head(i.mod_token, &i.ident)),
        syn::Item::Const(i) => ("a const", head(i.const_token, &i.ident)),
        syn::Item::Static(i) => ("a static", head(i.static_token, &i.ident)),
        syn::Item::Type(i) => ("a type alias", head(i.type_token, &i.ident)),
        syn::Item::Impl(i) => {
            let mut tokens = i.impl_token.to_token_stream();
            i.self_ty.to_tokens(&mut tokens);
            return syn::Error::new_spanned(
                tokens,
                "#[transactional] on an `impl` block is not supported: put it on each \
                 `async fn` of the impl that should run in a transaction",
            );
        }
        _ => return syn::Error::new(Span::call_site(), generic),
    };
    syn::Error::new_spanned(
        head,
        format!("#[transactional] applies to an `async fn`, not to {what}: put it on each async fn whose body should run in a transaction"),
    )
}

/// A fn without a return type cannot report the transaction's failures. Whether a return type
/// is a fitting `Result` is left to the type system (the runtime's `ScopeResult` bound), so
/// that aliases of `Result` work whatever their name.
fn check_return_type(sig: &Signature) -> syn::Result<()> {
    match &sig.output {
        ReturnType::Default => Err(syn::Error::new_spanned(
            sig,
            "#[transactional] fns must return a `Result<T, E>` where \
             `E: From<transactional::Error>`: beginning, committing and rolling back can fail, \
             and that failure has to reach the caller",
        )),
        ReturnType::Type(..) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn error(args: TokenStream) -> String {
        match TxArgs::parse(args) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e
                .into_iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    fn propagations() -> Vec<&'static str> {
        PROPAGATIONS.iter().map(|(s, _)| *s).collect()
    }

    fn isolations() -> Vec<&'static str> {
        ISOLATIONS.iter().map(|(s, _)| *s).collect()
    }

    #[test]
    fn levenshtein_distances() {
        assert_eq!(levenshtein("", ""), 0);
        assert_eq!(levenshtein("abc", ""), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("REQUIRE_NEW", "REQUIRES_NEW"), 1);
        assert_eq!(levenshtein("flaw", "lawn"), 2);
        assert_eq!(levenshtein("same", "same"), 0);
    }

    #[test]
    fn value_suggestions() {
        let p = propagations();
        assert_eq!(suggest("REQUIRE_NEW", &p, true), Some("REQUIRES_NEW"));
        assert_eq!(suggest("required", &p, true), Some("REQUIRED"));
        assert_eq!(suggest("RequiresNew", &p, true), Some("REQUIRES_NEW"));
        assert_eq!(suggest("requires-new", &p, true), Some("REQUIRES_NEW"));
        assert_eq!(suggest("not supported", &p, true), Some("NOT_SUPPORTED"));
        assert_eq!(suggest("NESTD", &p, true), Some("NESTED"));
        assert_eq!(suggest("MANDATROY", &p, true), Some("MANDATORY"));
        assert_eq!(suggest("whatever", &p, true), None);
        assert_eq!(suggest("", &p, true), None);
        let i = isolations();
        assert_eq!(suggest("SERIALISABLE", &i, true), Some("SERIALIZABLE"));
        assert_eq!(suggest("read_comitted", &i, true), Some("READ_COMMITTED"));
        assert_eq!(suggest("ReadCommitted", &i, true), Some("READ_COMMITTED"));
        assert_eq!(suggest("SNAPSHOT", &i, true), None);
    }

    #[test]
    fn key_suggestions() {
        assert_eq!(suggest("propogation", KEYS, false), Some("propagation"));
        assert_eq!(suggest("readOnly", KEYS, false), Some("read_only"));
        assert_eq!(suggest("readonly", KEYS, false), Some("read_only"));
        assert_eq!(suggest("dataSource", KEYS, false), Some("data_source"));
        assert_eq!(suggest("timout", KEYS, false), Some("timeout"));
        assert_eq!(
            suggest("noRollbackFor", KEYS, false),
            Some("no_rollback_for")
        );
        assert_eq!(suggest("krate", KEYS, false), Some("crate"));
        assert_eq!(suggest("foo", KEYS, false), None);
    }

    #[test]
    fn unknown_key_messages() {
        assert_eq!(
            unknown_key_message("foo"),
            "unknown option `foo` for #[transactional]; expected one of: propagation, \
             isolation, read_only, timeout, data_source, no_rollback_for, send, local, crate"
        );
        assert_eq!(
            unknown_key_message("isolaton"),
            "unknown option `isolaton` for #[transactional]; did you mean `isolation`? \
             expected one of: propagation, isolation, read_only, timeout, data_source, \
             no_rollback_for, send, local, crate"
        );
        assert!(unknown_key_message("rollback_for").contains("every `Err` already rolls back"));
        assert!(unknown_key_message("transactionManager").contains("`data_source`"));
        assert!(unknown_key_message("REQUIRES_NEW")
            .contains("did you mean `propagation = \"REQUIRES_NEW\"`?"));
        assert!(unknown_key_message("serializable")
            .contains("did you mean `isolation = \"SERIALIZABLE\"`?"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("5s"), Ok(5_000));
        assert_eq!(parse_duration_ms("2m"), Ok(120_000));
        assert_eq!(parse_duration_ms("1ms"), Ok(1));
        assert!(parse_duration_ms("0s").is_err());
        assert!(parse_duration_ms("0ms").is_err());
        assert!(parse_duration_ms("5").is_err());
        assert!(parse_duration_ms("s").is_err());
        assert!(parse_duration_ms("").is_err());
        assert!(parse_duration_ms("-5s").is_err());
        assert!(parse_duration_ms("5 s").is_err());
        assert!(parse_duration_ms("5h").is_err());
        assert!(parse_duration_ms("1.5s").is_err());
        assert!(parse_duration_ms("99999999999999999999ms").is_err());
        assert_eq!(parse_duration_ms("18446744073709551615ms"), Ok(u64::MAX));
        assert!(parse_duration_ms("18446744073709551615s").is_err());
    }

    #[test]
    fn timeouts() {
        let ms = |args| TxArgs::parse(args).unwrap().timeout_ms.unwrap().0;
        assert_eq!(ms(quote!(timeout = 5)), 5_000);
        assert_eq!(ms(quote!(timeout = "250ms")), 250);
        assert_eq!(ms(quote!(timeout = "2m")), 120_000);
        for bad in [
            quote!(timeout = 0),
            quote!(timeout = -5),
            quote!(timeout = 1.5),
            quote!(timeout = 5u64),
            quote!(timeout = "0s"),
            quote!(timeout = "5"),
            quote!(timeout = "5h"),
            quote!(timeout = 18446744073709551615),
            quote!(timeout = 99999999999999999999999),
            quote!(timeout = FIVE),
        ] {
            let message = error(bad);
            assert!(message.starts_with("invalid timeout "), "{message}");
            assert!(
                message.ends_with(
                    "expected a positive number of seconds (`timeout = 5`) or a string like \
                     \"500ms\", \"5s\", \"2m\""
                ),
                "{message}"
            );
        }
        assert!(error(quote!(timeout)).contains("needs a value: write `timeout = 5`"));
    }

    #[test]
    fn all_options() {
        let args = TxArgs::parse(quote!(
            propagation = "NESTED",
            isolation = "READ_COMMITTED",
            read_only = false,
            timeout = 3,
            data_source = "replica",
            no_rollback_for = |e: &E| e.benign(),
            crate = "::my_tx",
        ))
        .unwrap();
        assert_eq!(args.propagation.unwrap().to_string(), "Nested");
        assert_eq!(args.isolation.unwrap().to_string(), "ReadCommitted");
        assert!(!args.read_only.unwrap().value);
        assert_eq!(args.timeout_ms.unwrap().0, 3_000);
        assert_eq!(args.data_source.unwrap().value(), "replica");
        assert!(args.no_rollback_for.is_some());
        assert_eq!(
            args.krate.unwrap().to_token_stream().to_string(),
            ":: my_tx"
        );

        let empty = TxArgs::parse(quote!()).unwrap();
        assert!(empty.propagation.is_none() && empty.read_only.is_none());
        assert!(
            TxArgs::parse(quote!(read_only))
                .unwrap()
                .read_only
                .unwrap()
                .value
        );
    }

    #[test]
    fn every_spelling_maps_to_its_variant() {
        for (spring, variant) in PROPAGATIONS {
            let args = TxArgs::parse(quote!(propagation = #spring)).unwrap();
            assert_eq!(args.propagation.unwrap().to_string(), *variant);
        }
        for (spring, variant) in ISOLATIONS {
            let args = TxArgs::parse(quote!(isolation = #spring)).unwrap();
            assert_eq!(args.isolation.unwrap().to_string(), *variant);
        }
    }

    #[test]
    fn value_errors() {
        assert_eq!(
            error(quote!(propagation = "REQUIRE_NEW")),
            "unknown propagation \"REQUIRE_NEW\"; did you mean \"REQUIRES_NEW\"? expected one \
             of: \"REQUIRED\", \"REQUIRES_NEW\", \"NESTED\", \"SUPPORTS\", \"NOT_SUPPORTED\", \
             \"MANDATORY\", \"NEVER\""
        );
        assert!(error(quote!(propagation = "required")).contains("did you mean \"REQUIRED\"?"));
        assert!(error(quote!(isolation = "SNAPSHOT"))
            .starts_with("unknown isolation \"SNAPSHOT\"; expected one of: \"READ_UNCOMMITTED\""));
        assert_eq!(
            error(quote!(propagation = REQUIRES_NEW)),
            "`propagation` takes a string literal: write `propagation = \"REQUIRES_NEW\"`"
        );
        assert_eq!(
            error(quote!(propagation = Propagation::RequiresNew)),
            "`propagation` takes a string literal: write `propagation = \"REQUIRES_NEW\"`"
        );
        assert!(error(quote!(isolation = 4)).contains("takes a string literal"));
        assert!(error(quote!(read_only = "yes")).contains("`true` or `false`"));
        assert!(error(quote!(data_source = "")).contains("must not be empty"));
        assert!(error(quote!(data_source = reporting)).contains("takes a string literal"));
        assert!(error(quote!(no_rollback_for = "NotFound")).contains("takes a predicate"));
        assert!(error(quote!(crate = "not a path")).contains("is not a path"));
        assert!(error(quote!(crate = transactional)).contains("takes a string literal"));
        assert!(error(quote!(propagation)).contains("needs a value"));
    }

    #[test]
    fn structural_errors() {
        assert_eq!(
            error(quote!(propagation = "NESTED", propagation = "NEVER")),
            "duplicate option `propagation`: give each #[transactional] option once"
        );
        assert!(error(quote!("hello")).starts_with("expected an option like"));
        assert!(error(quote!(5)).starts_with("expected an option like"));
        assert_eq!(
            error(quote!("REQUIRES_NEW")),
            "expected an option name; did you mean `propagation = \"REQUIRES_NEW\"`?"
        );
        assert!(unknown_key_message("rollback_for")
            .contains("`no_rollback_for = <predicate>`; expected one of:"));
        assert!(error(quote!(read_only timeout = 5)).contains("expected `,`"));
        // every problem is reported, not only the first
        let all = error(quote!(foo = 1, propagation = "X", timeout = 0));
        assert_eq!(all.lines().count(), 3, "{all}");
    }
}
