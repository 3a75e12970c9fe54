//! The fn the attribute is put on: parsed with its body kept as tokens, and checked to be
//! something the attribute can rewrite.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::parse::{ParseStream, Parser};
use syn::{braced, Attribute, Ident, ReturnType, Signature, Token, Visibility};

use crate::options::Errors;

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
