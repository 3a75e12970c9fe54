//! The values options take: Spring's spellings of propagation and isolation, string
//! literals, and timeouts, each checked with an error on the offending value.

use quote::ToTokens;
use syn::ext::IdentExt;
use syn::{Expr, ExprLit, ExprUnary, Ident, Lit, LitStr, UnOp};

use crate::keys::Key;
use crate::suggest::suggest;

/// What a bad timeout is told, after the offending value.
const TIMEOUT_EXPECTED: &str =
    "expected a positive number of seconds (`timeout = 5`) or a string like \"500ms\", \"5s\", \"2m\"";

/// Looks through invisible groups (values passed in through `macro_rules!` fragments).
pub(crate) fn ungroup(mut expr: Expr) -> Expr {
    while let Expr::Group(group) = expr {
        expr = *group.expr;
    }
    expr
}

/// The string literal an option requires, or an error saying so.
pub(crate) fn string_value(value: &Expr, key: Key) -> syn::Result<LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s.clone()),
        other => Err(syn::Error::new_spanned(
            other,
            format!(
                "`{}` takes a string literal: write `{}`",
                key.name(),
                key.example()
            ),
        )),
    }
}

/// Maps a Spring spelling (`"REQUIRES_NEW"`) to the runtime's variant (`RequiresNew`).
pub(crate) fn enum_value(value: &Expr, key: Key, table: &[(&str, &str)]) -> syn::Result<Ident> {
    let option = key.name();
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
                    key.example()
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

pub(crate) fn quoted_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Validates a `timeout = ...` value and returns it in milliseconds.
pub(crate) fn timeout_value(value: &Expr) -> syn::Result<u64> {
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

#[cfg(test)]
mod tests {
    use super::*;
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
}
