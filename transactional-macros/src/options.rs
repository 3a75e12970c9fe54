//! The attribute's options: one [`Key`] per option, parsed from the attribute's tokens with
//! `syn`, each value validated with an error on the offending token, and as many problems as
//! possible collected before giving up, so a user fixes them in one go.
//!
//! Adding an option: a `Key` variant in `keys.rs` (its name, its example), a field of
//! [`TxArgs`], and its arm in `apply`.

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream, Parser};
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, Ident, Lit, LitBool, LitStr, Path, Token};

pub(crate) use crate::keys::Key;
use crate::keys::{ISOLATIONS, PROPAGATIONS};
use crate::suggest::{unknown_key_message, value_used_as_key};
use crate::values::{enum_value, string_value, timeout_value, ungroup};

/// One option as written: its key, where it is, and its value if it has one.
struct RawOption {
    key: Result<Key, Ident>,
    span: Span,
    value: Option<Expr>,
}

impl Parse for RawOption {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        if !input.peek(Ident::peek_any) {
            if let Ok(lit) = input.fork().parse::<LitStr>() {
                if let Some(hint) = value_used_as_key(&lit.value()) {
                    return Err(input.error(format!("expected an option name; {hint}")));
                }
            }
            return Err(input.error(
                "expected an option like `propagation = \"REQUIRES_NEW\"` or `read_only`; \
                 see the #[transactional] docs for the full list",
            ));
        }
        let ident = input.call(Ident::parse_any)?;
        let written = ident.unraw().to_string();
        let key = Key::ALL
            .into_iter()
            .find(|k| k.name() == written)
            .ok_or_else(|| ident.clone());
        let value = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            Some(input.parse::<Expr>()?)
        } else {
            None
        };
        Ok(RawOption {
            key,
            span: ident.span(),
            value,
        })
    }
}

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
    /// How many times to run the scope again after a serialization failure, and where.
    pub(crate) retry: Option<(u32, Span)>,
    /// The path to the `transactional` crate, when not `::transactional`.
    pub(crate) krate: Option<Path>,
    /// `send` (`Some(true)`): the body is `Send` and its type is erased; `local`
    /// (`Some(false)`): it keeps its own type; `None`: decided from the signature.
    pub(crate) send: Option<(bool, Span)>,
}

impl TxArgs {
    /// Parses and validates the attribute's arguments (the tokens inside the parentheses).
    pub(crate) fn parse(args: TokenStream) -> syn::Result<TxArgs> {
        Parser::parse2(<TxArgs as Parse>::parse, args)
    }
}

impl Parse for TxArgs {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut raw = Vec::new();
        while !input.is_empty() {
            raw.push(input.parse::<RawOption>()?);
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
        let mut seen: Vec<Key> = Vec::new();
        for RawOption { key, span, value } in raw {
            let key = match key {
                Ok(key) => key,
                Err(ident) => {
                    let written = ident.unraw().to_string();
                    errors.push(syn::Error::new(span, unknown_key_message(&written)));
                    continue;
                }
            };
            if seen.contains(&key) {
                errors.push(syn::Error::new(
                    span,
                    format!(
                        "duplicate option `{}`: give each #[transactional] option once",
                        key.name()
                    ),
                ));
                continue;
            }
            seen.push(key);
            if let Err(e) = apply(&mut args, key, span, value) {
                errors.push(e);
            }
        }
        if let Err(e) = never_begins_check(&args) {
            errors.push(e);
        }
        errors.finish()?;
        Ok(args)
    }
}

/// Validates one option's value and stores it.
fn apply(args: &mut TxArgs, key: Key, span: Span, value: Option<Expr>) -> syn::Result<()> {
    let name = key.name();
    let Some(value) = value else {
        if key == Key::ReadOnly {
            args.read_only = Some(LitBool::new(true, span));
            return Ok(());
        }
        if key == Key::Send || key == Key::Local {
            if let Some((_, first)) = args.send {
                let mut error = syn::Error::new(
                    span,
                    "`send` and `local` contradict each other: give one of them",
                );
                error.combine(syn::Error::new(first, "the other one is here"));
                return Err(error);
            }
            args.send = Some((key == Key::Send, span));
            return Ok(());
        }
        return Err(syn::Error::new(
            span,
            format!("option `{name}` needs a value: write `{}`", key.example()),
        ));
    };
    let value = ungroup(value);
    match key {
        Key::Propagation => {
            args.propagation = Some(enum_value(&value, key, PROPAGATIONS)?);
        }
        Key::Isolation => {
            args.isolation = Some(enum_value(&value, key, ISOLATIONS)?);
        }
        Key::ReadOnly => match &value {
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
        Key::Timeout => args.timeout_ms = Some((timeout_value(&value)?, value.span())),
        Key::DataSource => {
            let lit = string_value(&value, key)?;
            if lit.value().trim().is_empty() {
                return Err(syn::Error::new(
                    lit.span(),
                    "`data_source` must not be empty: give the name the pool was registered \
                     under, or leave the option out for the default data source",
                ));
            }
            args.data_source = Some(lit);
        }
        Key::NoRollbackFor => {
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
        Key::Retry => {
            let error = |message: &str| syn::Error::new_spanned(&value, message);
            let Expr::Lit(ExprLit {
                lit: Lit::Int(int), ..
            }) = &value
            else {
                return Err(error(
                    "`retry` takes how many times to run the scope again, as a number: \
                     `retry = 3`",
                ));
            };
            let retries: u32 = int
                .base10_parse()
                .ok()
                .filter(|_| int.suffix().is_empty())
                .ok_or_else(|| error("`retry` takes a whole number from 1 to 100: `retry = 3`"))?;
            if !(1..=100).contains(&retries) {
                return Err(error(
                    "`retry` takes a whole number from 1 to 100 (`retry = 0` retries nothing: \
                     leave the option out)",
                ));
            }
            args.retry = Some((retries, value.span()));
        }
        Key::Local | Key::Send => {
            return Err(syn::Error::new_spanned(
                value,
                format!("`{name}` takes no value: write just `{name}`"),
            ))
        }
        Key::Crate => {
            let lit = string_value(&value, key)?;
            // A module path: the expansion puts it in expressions (`<path>::Transactional::new()`),
            // where generics (`a::b<T>`) or `Fn(..)` sugar would not parse.
            let path = lit.parse_with(Path::parse_mod_style).map_err(|_| {
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
    }
    Ok(())
}

/// Isolation, read-only, a timeout and `retry` belong to a transaction the scope begins: with a
/// propagation that never begins one, they could never apply. (MANDATORY never begins one
/// either, but the runtime lets its isolation and read-only be checked against the
/// transaction it joins; only `retry` is refused there.)
fn never_begins_check(args: &TxArgs) -> syn::Result<()> {
    let Some(propagation) = &args.propagation else {
        return Ok(());
    };
    let mut errors = Errors::default();
    let spring = match propagation.to_string().as_str() {
        "Supports" => "SUPPORTS",
        "NotSupported" => "NOT_SUPPORTED",
        "Never" => "NEVER",
        "Mandatory" => "MANDATORY",
        _ => return Ok(()),
    };
    if let Some((_, span)) = args.retry {
        errors.push(syn::Error::new(
            span,
            format!(
                "`retry` runs again a scope that begins its own transaction, and propagation \
                 \"{spring}\" never begins one: running it again would repeat part of its \
                 caller's work; put `retry` on the scope that begins the transaction"
            ),
        ));
    }
    if spring == "MANDATORY" {
        return errors.finish();
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use quote::{quote, ToTokens};

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
        assert!(error(quote!(crate = "a::b<T>")).contains("is not a path"));
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
