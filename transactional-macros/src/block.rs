//! `#[transactional]` on an `impl` block (Spring's `@Transactional` on a class): every
//! `async fn` of the block is rewritten as if it carried the block's attribute, unless it
//! carries one of its own — which replaces the block's entirely, as Spring's method-level
//! annotation does — or `#[transactional(skip)]`, which leaves it as written. Other items
//! (fns that are not `async`, consts, types) are left alone.

use proc_macro2::{Span, TokenStream};
use quote::{quote, ToTokens};
use syn::{Attribute, ImplItem, ItemImpl, Meta};

use crate::expand;
use crate::options::{Errors, TxArgs};

/// Rewrites the `async fn`s of `block` with `args` (already known to parse).
pub(crate) fn transactional(args: TokenStream, mut block: ItemImpl) -> TokenStream {
    let mut errors = Errors::default();
    for item in &mut block.items {
        let ImplItem::Fn(function) = item else {
            continue;
        };
        let own = match own_attribute(&mut function.attrs) {
            Ok(own) => own,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let args = match own {
            Some(Own::Skip) => continue,
            Some(Own::Args(args)) => args,
            None if function.sig.asyncness.is_none() => continue,
            None if matches!(function.sig.output, syn::ReturnType::Default) => {
                errors.push(syn::Error::new_spanned(
                    &function.sig,
                    "this `async fn` of a #[transactional] impl block returns nothing, so it \
                     could not report a failure to commit: return a `Result<T, E>` where \
                     `E: From<transactional::Error>`, or leave it out with \
                     `#[transactional(skip)]`",
                ));
                continue;
            }
            None => args.clone(),
        };
        let rewritten = expand::transactional(args, function.to_token_stream());
        *item = ImplItem::Verbatim(rewritten);
    }
    let errors = errors
        .finish()
        .err()
        .map(|e| e.to_compile_error())
        .unwrap_or_default();
    quote!(#block #errors)
}

/// A method's own `#[transactional]`.
enum Own {
    /// `#[transactional(skip)]`: not transactional.
    Skip,
    /// Its own options, instead of the block's.
    Args(TokenStream),
}

/// Takes the method's own `#[transactional...]` out of `attrs` (the block expands it: left in
/// place it would be expanded again). Recognised by the last segment of its path, so that
/// `#[transactional]` and `#[tx::transactional]` both count.
fn own_attribute(attrs: &mut Vec<Attribute>) -> syn::Result<Option<Own>> {
    let is_ours = |attr: &Attribute| {
        attr.path()
            .segments
            .last()
            .is_some_and(|segment| segment.ident == "transactional")
    };
    let mut found: Vec<Attribute> = Vec::new();
    attrs.retain(|attr| {
        if is_ours(attr) {
            found.push(attr.clone());
            false
        } else {
            true
        }
    });
    let mut found = found.into_iter();
    let Some(attr) = found.next() else {
        return Ok(None);
    };
    if let Some(again) = found.next() {
        return Err(syn::Error::new_spanned(
            again,
            "a method carries #[transactional] at most once: merge the options into one",
        ));
    }
    let args =
        match attr.meta {
            Meta::Path(_) => TokenStream::new(),
            Meta::List(list) => list.tokens,
            Meta::NameValue(nv) => return Err(syn::Error::new_spanned(
                nv,
                "expected `#[transactional(...)]`, `#[transactional]` or `#[transactional(skip)]`",
            )),
        };
    if is_skip(&args) {
        return Ok(Some(Own::Skip));
    }
    Ok(Some(Own::Args(args)))
}

/// Whether the options are exactly `skip`.
fn is_skip(args: &TokenStream) -> bool {
    let mut tokens = args.clone().into_iter();
    matches!(
        (tokens.next(), tokens.next()),
        (Some(proc_macro2::TokenTree::Ident(ident)), None) if ident == "skip"
    )
}

/// `#[transactional(skip)]` outside an annotated impl block: it would do nothing.
pub(crate) fn skip_alone(args: &TokenStream) -> Option<syn::Error> {
    is_skip(args).then(|| {
        let span = args
            .clone()
            .into_iter()
            .next()
            .map_or(Span::call_site(), |t| t.span());
        syn::Error::new(
            span,
            "`#[transactional(skip)]` leaves a method out of its impl block's \
             #[transactional]; on a fn outside such a block it does nothing: remove it",
        )
    })
}

/// Whether `item` is an `impl` block (its outer attributes, `unsafe` and `default` skipped),
/// parsed or not: a syntax error in one of its fns is then reported as such.
pub(crate) fn is_impl(item: &TokenStream) -> bool {
    use proc_macro2::TokenTree;
    let mut tokens = item.clone().into_iter();
    loop {
        match tokens.next() {
            Some(TokenTree::Punct(p)) if p.as_char() == '#' => {
                tokens.next(); // the attribute's brackets
            }
            Some(TokenTree::Ident(i)) if i == "unsafe" || i == "default" => {}
            Some(TokenTree::Ident(i)) => return i == "impl",
            _ => return false,
        }
    }
}

/// Whether the options parse (checked once for the whole block, so that a mistake in them is
/// reported once, not once per method).
pub(crate) fn check_args(args: &TokenStream) -> syn::Result<()> {
    TxArgs::parse(args.clone()).map(drop)
}
