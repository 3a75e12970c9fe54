//! What the expansion reads from the fn's signature: whether its body is surely `Send`, how to
//! read its error (the describer), how to tie a `no_rollback_for` predicate to its error type;
//! and `respan`, which gives tokens the span an error should point at.

use proc_macro2::Ident;
use proc_macro2::{Group, Span, TokenStream, TokenTree};
use quote::{quote, ToTokens};
use syn::spanned::Spanned;
use syn::ReturnType;

/// For a return type that reads as a `Result` (`Result<T, E>`, `io::Result<T>`, an alias
/// `AppResult<T>`): a way to read the error, as well as its type allows (the runtime's
/// `__private::Inspect`): its words for the log line of the rollback it causes, and the
/// database's error in its `source()` chain, which tells the runtime whether the database
/// rolled the transaction back. Nothing for other return types (the runtime's
/// `ScopeResult` bound reports those) or one that contains `impl Trait`, which a closure's
/// parameter cannot name.
pub(crate) fn describe_errors(
    krate: &TokenStream,
    output: &ReturnType,
    retry: bool,
) -> Option<TokenStream> {
    let ReturnType::Type(_, ty) = output else {
        return None;
    };
    // A type passed through a `macro_rules!` fragment (`$t:ty`) comes wrapped in a group.
    let mut inner = &**ty;
    while let syn::Type::Group(group) = inner {
        inner = &group.elem;
    }
    let syn::Type::Path(path) = inner else {
        return None;
    };
    let reads_as_result = path
        .path
        .segments
        .last()
        .is_some_and(|last| last.ident.to_string().ends_with("Result"));
    if !reads_as_result || mentions_impl(ty.to_token_stream()) || path.qself.is_some() {
        return None;
    }
    let span = ty.span();
    // With `retry`, an error type it cannot read is a compile error (see the runtime's
    // `__private::Unreadable`).
    let facts = Ident::new(if retry { "retry_facts" } else { "facts" }, span);
    // All of it carries the return type's span: an error type `retry` cannot read is
    // reported there.
    Some(respan(
        quote! {
        |output: &#ty, text: bool| match output {
            ::core::result::Result::Err(error) => {
                #[allow(unused_imports)]
                use #krate::__private::{
                    ViaDisplay as _, ViaDynError as _, ViaError as _, ViaNothing as _,
                    ViaRetryable as _, ViaSendSyncDynError as _,
                };
                ::core::option::Option::Some(
                    (&&&&&&#krate::__private::Inspect(error)).#facts(text),
                )
            }
            ::core::result::Result::Ok(_) => ::core::option::Option::None,
        }
        },
        span,
    ))
}

/// The same tokens, all with `span`.
pub(crate) fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                let mut respanned = Group::new(group.delimiter(), respan(group.stream(), span));
                respanned.set_span(span);
                token = TokenTree::Group(respanned);
            }
            token.set_span(span);
            token
        })
        .collect()
}

/// Whether the body can be required to be `Send` without asking: a free fn (no receiver) with
/// no type parameters, no `impl Trait` or `dyn Trait` argument, and no `dyn Trait` without
/// `Send` in its return type. Anything generic may await
/// futures whose `Send`-ness is unknown (an `async fn` of a trait, a `&R` without `Sync`), and a
/// method's impl may be generic, which the attribute cannot see.
pub(crate) fn surely_send(sig: &syn::Signature) -> bool {
    let generic = sig
        .generics
        .params
        .iter()
        .any(|p| !matches!(p, syn::GenericParam::Lifetime(_)));
    let unsure_args = sig.inputs.iter().any(|input| match input {
        syn::FnArg::Receiver(_) => true,
        syn::FnArg::Typed(arg) => mentions(arg.ty.to_token_stream(), &["impl", "dyn"]),
    });
    // `Result<T, Box<dyn Error>>`: a trait object that does not say `Send` is not.
    let unsure_output = match &sig.output {
        ReturnType::Type(_, ty) => {
            let ty = ty.to_token_stream();
            mentions(ty.clone(), &["dyn"]) && !mentions(ty, &["Send"])
        }
        ReturnType::Default => false,
    };
    !generic && !unsure_args && !unsure_output
}

/// Passes the predicate through an identity fn that ties its argument to the fn's error type.
///
/// rustc checks a closure argument before it learns the error type from the fn's return type,
/// so `no_rollback_for = |e| e.is_benign()` would otherwise need `|e: &AppError|`. Naming the
/// return type first, in `PhantomData::<R>`, fixes `E` before the closure is checked. A return
/// type containing `impl Trait` cannot be named in an expression; the predicate is passed as
/// written then.
pub(crate) fn typed_predicate(predicate: &syn::Expr, output: &ReturnType) -> TokenStream {
    let ty = match output {
        ReturnType::Type(_, ty) if !mentions_impl(ty.to_token_stream()) => ty,
        _ => return quote!(#predicate),
    };
    quote! {{
        fn __transactional_no_rollback_for<T, E, P>(
            _: ::core::marker::PhantomData<::core::result::Result<T, E>>,
            predicate: P,
        ) -> P
        where
            P: ::core::ops::Fn(&E) -> bool,
        {
            predicate
        }
        __transactional_no_rollback_for(::core::marker::PhantomData::<#ty>, #predicate)
    }}
}

/// Whether a type's tokens contain `impl` anywhere (`Result<impl Display, E>`).
pub(crate) fn mentions_impl(tokens: TokenStream) -> bool {
    mentions(tokens, &["impl"])
}

/// Whether tokens contain one of `words` anywhere.
fn mentions(tokens: TokenStream, words: &[&str]) -> bool {
    tokens.into_iter().any(|token| match token {
        TokenTree::Ident(ident) => words.iter().any(|w| ident == w),
        TokenTree::Group(group) => mentions(group.stream(), words),
        _ => false,
    })
}
