//! Code generation: the fn again, with its body run through `Transactional`.

use proc_macro2::{Delimiter, Group, Ident, Literal, Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::ReturnType;

use crate::block;
use crate::function::TxFn;
use crate::options::{Errors, TxArgs};
use crate::reading::{describe_errors, respan, surely_send, typed_predicate};

/// The whole macro: parse, validate, then either rewrite the fn or report every error found.
///
/// On error the item is emitted unchanged next to the errors, so that code using the fn does
/// not pile up follow-on errors ("cannot find function ...") on top of the real one.
pub(crate) fn transactional(args: TokenStream, item: TokenStream) -> TokenStream {
    if let Some(error) = block::skip_alone(&args) {
        let error = error.to_compile_error();
        return quote!(#item #error);
    }
    if block::is_impl(&item) {
        let parsed = syn::parse2::<syn::ItemImpl>(item.clone())
            .and_then(|impl_block| block::check_args(&args).map(|()| impl_block));
        return match parsed {
            Ok(impl_block) => block::transactional(args, impl_block),
            Err(error) => {
                let error = error.to_compile_error();
                quote!(#item #error)
            }
        };
    }
    let args = TxArgs::parse(args);
    let function = TxFn::parse(item.clone());
    match (args, function) {
        (Ok(args), Ok(function)) => expand(&args, function),
        (args, function) => {
            let mut errors = Errors::default();
            if let Err(e) = args {
                errors.push(e);
            }
            if let Err(e) = function {
                errors.push(e);
            }
            let errors = errors
                .finish()
                .err()
                .map(|e| e.to_compile_error())
                .unwrap_or_default();
            quote!(#item #errors)
        }
    }
}

/// Emits the fn with its signature and attributes as written and this body:
///
/// ```text
/// ::transactional::__private::scope(
///     ::transactional::Transactional::new()
///         .name(concat!(module_path!(), "::", "<fn>"))
///         .<one setter per option given>,
///     ::transactional::__private::<SendBody | LocalBody>(async move { <body> }),
///     ::transactional::__private::Spec {
///         rule: <Some(the no_rollback_for predicate) | None>,
///         describe: <Some(the describer) | None>,
///         classify: None,
///     },
/// )
/// .await
/// ```
///
/// The describer is there when the return type reads as a `Result` (see [`describe_errors`]).
pub(crate) fn expand(args: &TxArgs, function: TxFn) -> TokenStream {
    let TxFn {
        attrs,
        vis,
        sig,
        inner_attrs,
        body,
        brace_span,
    } = function;

    let krate = match &args.krate {
        Some(path) => quote!(#path),
        None => quote!(::transactional),
    };

    let name = Literal::string(&sig.ident.unraw().to_string());
    let mut builder = quote! {
        #krate::Transactional::new()
            .name(::core::concat!(::core::module_path!(), "::", #name))
    };
    if let Some(variant) = &args.propagation {
        builder.extend(quote!(.propagation(#krate::Propagation::#variant)));
    }
    if let Some(variant) = &args.isolation {
        builder.extend(quote!(.isolation(#krate::Isolation::#variant)));
    }
    if let Some(read_only) = &args.read_only {
        builder.extend(quote!(.read_only(#read_only)));
    }
    if let Some((ms, span)) = args.timeout_ms {
        let ms = Literal::u64_unsuffixed(ms);
        builder.extend(quote_spanned!(span=> .timeout(::core::time::Duration::from_millis(#ms))));
    }
    if let Some(data_source) = &args.data_source {
        builder.extend(quote!(.data_source(#data_source)));
    }

    let mut block = Group::new(Delimiter::Brace, body);
    block.set_span(brace_span);

    // `run` carries the return type's span, so that an error type without
    // `From<transactional::Error>` is reported on the return type rather than on the attribute.
    let ret_span = match &sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => Span::call_site(),
    };
    // A `Send` body is type-erased (see the runtime's `__private`), so that a chain of
    // annotated fns stays shallow for the trait solver; a body that may not be `Send` keeps its
    // own type.
    let send = match args.send {
        Some((send, _)) => send,
        None => surely_send(&sig),
    };
    // The whole path carries the return type's span, so that a return type the runtime
    // cannot use (its `ScopeResult` bound) is reported on the return type.
    let private = private_item(&krate, "scope", ret_span);
    if let Some((retries, span)) = args.retry {
        let parts = Parts {
            attrs,
            vis,
            sig,
            inner_attrs,
            block,
            ret_span,
        };
        return retrying(args, &krate, builder, (retries, span), send, parts);
    }
    // With the return type's span too: a return type the runtime cannot use is reported there.
    let describe = match describe_errors(&krate, &sig.output, false) {
        Some(describe) => quote_spanned!(ret_span=> ::core::option::Option::Some(#describe)),
        None => quote_spanned!(ret_span=> ::core::option::Option::None),
    };
    let wrapper = private_item(
        &krate,
        if send { "SendBody" } else { "LocalBody" },
        ret_span,
    );
    // `async move` carries the return type's span too: a bound the body's output does not meet
    // is reported on the return type.
    let body = quote_spanned!(ret_span=> #wrapper(async move #block));
    let spec = spec(&krate, args, &sig.output, describe, ret_span, None);
    let call = quote!(#private(#builder, #body, #spec));

    quote! {
        #(#attrs)*
        #vis #sig {
            #(#inner_attrs)*
            #call.await
        }
    }
}

/// `<krate>::__private::<name>`, all with `span`.
fn private_item(krate: &TokenStream, name: &str, span: Span) -> TokenStream {
    let name = Ident::new(name, span);
    respan(quote!(#krate::__private::#name), span)
}

/// The `__private::Spec` of the call: the `no_rollback_for` rule, the describer (an `Option`
/// already), and the classifier `retry` uses for an error type that says itself whether it is
/// worth another attempt.
fn spec(
    krate: &TokenStream,
    args: &TxArgs,
    output: &ReturnType,
    describe: TokenStream,
    ret_span: Span,
    classify: Option<TokenStream>,
) -> TokenStream {
    let rule = match &args.no_rollback_for {
        Some(predicate) => {
            let predicate = typed_predicate(predicate, output);
            quote!(::core::option::Option::Some(#predicate))
        }
        None => quote_spanned!(ret_span=> ::core::option::Option::None::<fn(&_) -> bool>),
    };
    let classify = match classify {
        Some(classify) => quote_spanned!(ret_span=> ::core::option::Option::Some(#classify)),
        None => quote_spanned!(ret_span=> ::core::option::Option::None),
    };
    let spec = private_item(krate, "Spec", ret_span);
    quote_spanned!(ret_span=> #spec { rule: #rule, describe: #describe, classify: #classify })
}

/// The fn's parts the expansion puts back around the new body.
struct Parts {
    attrs: Vec<syn::Attribute>,
    vis: syn::Visibility,
    sig: syn::Signature,
    inner_attrs: Vec<syn::Attribute>,
    block: Group,
    ret_span: Span,
}

/// The expansion with `retry = N`: the body becomes a closure that makes a new future for each
/// attempt, from clones of the fn's arguments (so each attempt owns its arguments, as the body
/// expects):
///
/// ```text
/// ::transactional::__private::scope(
///     <builder>,
///     ::transactional::__private::<SendAttempts | LocalAttempts>(
///         move || { let arg = Clone::clone(&arg); …; async move { <body> } },
///         N,
///     ),
///     ::transactional::__private::Spec { rule, describe: Some(<describer>), classify: None },
/// )
/// .await
/// ```
///
/// For a return type that does not read as a `Result`, `describe: None` and `classify:
/// Some(__private::by_trait())`: its error type must implement `RetryableError`.
fn retrying(
    args: &TxArgs,
    krate: &TokenStream,
    builder: TokenStream,
    (retries, span): (u32, Span),
    send: bool,
    parts: Parts,
) -> TokenStream {
    let Parts {
        attrs,
        vis,
        sig,
        inner_attrs,
        block,
        ret_span,
    } = parts;
    let mut clones = TokenStream::new();
    let mut errors = crate::options::Errors::default();
    for input in &sig.inputs {
        let syn::FnArg::Typed(arg) = input else {
            // `self`, `&self`: used as it is (a reference is copied into each attempt).
            continue;
        };
        match &*arg.pat {
            syn::Pat::Ident(syn::PatIdent {
                ident,
                mutability,
                by_ref: None,
                subpat: None,
                ..
            }) => {
                let arg_span = arg.span();
                clones.extend(quote_spanned!(arg_span=>
                    let #mutability #ident = ::core::clone::Clone::clone(&#ident);
                ));
            }
            other => errors.push(syn::Error::new_spanned(
                other,
                "with `retry`, each attempt gets its own clones of the fn's arguments, so they \
                 must be plain names (`order: NewOrder`), not patterns",
            )),
        }
    }
    if let Err(error) = errors.finish() {
        // The item as written, inner attributes included.
        let body = block.stream();
        let mut written = Group::new(Delimiter::Brace, quote!(#(#inner_attrs)* #body));
        written.set_span(block.span());
        let item = quote!(#(#attrs)* #vis #sig #written);
        let error = error.to_compile_error();
        return quote!(#item #error);
    }
    // A return type that reads as a `Result` has its error read (the database's error in it
    // says whether to run again); another one's error type must say it itself
    // (`RetryableError`).
    let describe = describe_errors(krate, &sig.output, true);
    let private = private_item(krate, "scope", ret_span);
    let attempts = private_item(
        krate,
        if send {
            "SendAttempts"
        } else {
            "LocalAttempts"
        },
        ret_span,
    );
    let retries = Literal::u32_unsuffixed(retries);
    let retries = quote_spanned!(span=> #retries);
    let make = quote_spanned!(ret_span=> move || { #clones async move #block });
    // Each attempt's clone is the binding the body mutates; the outer one never changes, so
    // its `mut` would only warn (`unused_mut`) about code the user did not write.
    let mut sig = sig;
    for input in sig.inputs.iter_mut() {
        if let syn::FnArg::Typed(arg) = input {
            if let syn::Pat::Ident(ident) = &mut *arg.pat {
                ident.mutability = None;
            }
        }
    }
    // The call carries the return type's span: an error type `retry` cannot classify is
    // reported there.
    let (describe, classify) = match describe {
        Some(describe) => (
            quote_spanned!(ret_span=> ::core::option::Option::Some(#describe)),
            None,
        ),
        None => {
            let by_trait = private_item(krate, "by_trait", ret_span);
            (
                quote_spanned!(ret_span=> ::core::option::Option::None),
                Some(quote_spanned!(ret_span=> #by_trait())),
            )
        }
    };
    let spec = spec(krate, args, &sig.output, describe, ret_span, classify);
    let call = quote_spanned!(ret_span=> #private(#builder, #attempts(#make, #retries), #spec));
    quote! {
        #(#attrs)*
        #vis #sig {
            #(#inner_attrs)*
            #call.await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::mentions_impl;

    /// Token text without whitespace, so that comparisons ignore spacing and `Joint`-ness.
    fn squash(tokens: TokenStream) -> String {
        tokens.to_string().split_whitespace().collect()
    }

    fn expand_str(args: TokenStream, item: TokenStream) -> String {
        squash(transactional(args, item))
    }

    fn tokens(s: &str) -> String {
        squash(s.parse::<TokenStream>().unwrap())
    }

    /// The describer the expansion passes for a return type `ty`.
    fn describer(krate: &str, ty: &str) -> String {
        format!(
            "::core::option::Option::Some(|output: &{ty}, text: bool| match output {{
                ::core::result::Result::Err(error) => {{
                    #[allow(unused_imports)]
                    use {krate}::__private::{{
                        ViaDisplay as _, ViaDynError as _, ViaError as _, ViaNothing as _,
                        ViaRetryable as _, ViaSendSyncDynError as _,
                    }};
                    ::core::option::Option::Some(
                        (&&&&&&{krate}::__private::Inspect(error)).facts(text),
                    )
                }}
                ::core::result::Result::Ok(_) => ::core::option::Option::None,
            }})"
        )
    }

    #[test]
    fn bare_attribute_only_names_the_scope() {
        let out = expand_str(
            quote!(),
            quote! {
                /// Saves.
                #[must_use]
                pub async fn save(&self, x: i32) -> Result<i32, AppError> { Ok(x) }
            },
        );
        assert_eq!(
            out,
            tokens(
                &r#"
                #[doc = r" Saves."]
                #[must_use]
                pub async fn save(&self, x: i32) -> Result<i32, AppError> {
                    ::transactional::__private::scope(
                        ::transactional::Transactional::new()
                            .name(::core::concat!(::core::module_path!(), "::", "save")),
                        ::transactional::__private::LocalBody(async move { Ok(x) }),
                        ::transactional::__private::Spec {
                            rule: ::core::option::Option::None::<fn(&_) -> bool>,
                            describe: DESCRIBER,
                            classify: ::core::option::Option::None
                        }
                    )
                    .await
                }
                "#
                .replace(
                    "DESCRIBER",
                    &describer("::transactional", "Result<i32, AppError>")
                ),
            )
        );
    }

    #[test]
    fn every_option_becomes_a_setter_in_order() {
        let out = expand_str(
            quote!(
                data_source = "reporting",
                timeout = "250ms",
                read_only,
                isolation = "SERIALIZABLE",
                propagation = "REQUIRES_NEW",
                no_rollback_for = AppError::is_benign,
                crate = "my::tx"
            ),
            quote!(
                async fn r#report() -> AppResult<()> {
                    Ok(())
                }
            ),
        );
        assert_eq!(
            out,
            tokens(
                &r#"
                async fn r#report() -> AppResult<()> {
                    my::tx::__private::scope(
                        my::tx::Transactional::new()
                            .name(::core::concat!(::core::module_path!(), "::", "report"))
                            .propagation(my::tx::Propagation::RequiresNew)
                            .isolation(my::tx::Isolation::Serializable)
                            .read_only(true)
                            .timeout(::core::time::Duration::from_millis(250))
                            .data_source("reporting"),
                        my::tx::__private::SendBody(async move { Ok(()) }),
                        my::tx::__private::Spec {
                            rule: ::core::option::Option::Some({
                                fn __transactional_no_rollback_for<T, E, P>(
                                    _: ::core::marker::PhantomData<::core::result::Result<T, E>>,
                                    predicate: P,
                                ) -> P
                                where
                                    P: ::core::ops::Fn(&E) -> bool,
                                {
                                    predicate
                                }
                                __transactional_no_rollback_for(
                                    ::core::marker::PhantomData::<AppResult<()> >,
                                    AppError::is_benign
                                )
                            }),
                            describe: DESCRIBER,
                            classify: ::core::option::Option::None
                        }
                    )
                    .await
                }
                "#
                .replace("DESCRIBER", &describer("my::tx", "AppResult<()>")),
            )
        );
    }

    #[test]
    fn inner_attributes_stay_on_the_fn_body() {
        let out = expand_str(
            quote!(read_only = false, timeout = 2),
            quote!(
                async fn f() -> Result<(), E> {
                    #![allow(unused)]
                    let x = 1;
                    Ok(())
                }
            ),
        );
        assert_eq!(
            out,
            tokens(
                &r#"
                async fn f() -> Result<(), E> {
                    #![allow(unused)]
                    ::transactional::__private::scope(
                        ::transactional::Transactional::new()
                            .name(::core::concat!(::core::module_path!(), "::", "f"))
                            .read_only(false)
                            .timeout(::core::time::Duration::from_millis(2000)),
                        ::transactional::__private::SendBody(async move { let x = 1; Ok(()) }),
                        ::transactional::__private::Spec {
                            rule: ::core::option::Option::None::<fn(&_) -> bool>,
                            describe: DESCRIBER,
                            classify: ::core::option::Option::None
                        }
                    )
                    .await
                }
                "#
                .replace("DESCRIBER", &describer("::transactional", "Result<(), E>")),
            )
        );
    }

    #[test]
    fn predicates_are_passed_as_written_when_the_return_type_has_impl_trait() {
        let out = expand_str(
            quote!(no_rollback_for = |e: &E| e.ok()),
            quote!(
                async fn f() -> Result<impl Display, E> {
                    Ok(1)
                }
            ),
        );
        // As written: no identity fn naming the return type around it, and no describer (a
        // closure's parameter cannot name `impl Display`).
        assert!(
            out.contains(
                "rule:::core::option::Option::Some(|e:&E|e.ok()),describe:::core::option::Option::None,"
            ),
            "{out}"
        );
        assert!(mentions_impl(quote!(Result<Vec<impl Display>, E>)));
        assert!(!mentions_impl(quote!(Result<Vec<Implement>, E>)));
    }

    #[test]
    fn only_plain_free_fns_are_surely_send() {
        let send = |sig: TokenStream| surely_send(&syn::parse2(sig).unwrap());
        assert!(send(quote!(async fn f(a: i64, b: &'static str) -> R)));
        assert!(send(quote!(async fn f<'a>(a: &'a Repo) -> R)));
        assert!(!send(quote!(async fn f<T>(a: T) -> R)));
        assert!(!send(quote!(async fn f(a: &impl Repo) -> R)));
        assert!(!send(quote!(async fn f(a: &dyn Repo) -> R)));
        assert!(!send(quote!(async fn f(&self) -> R)));
        assert!(!send(quote!(async fn f(self: Arc<Self>) -> R)));
    }

    #[test]
    fn errors_keep_the_item() {
        let out = expand_str(
            quote!(foo = 1),
            quote!(
                async fn f() -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        assert!(out.starts_with(&tokens("async fn f() -> Result<(), E> { Ok(()) }")));
        assert!(out.contains("compile_error"));
        assert!(out.contains("unknownoption`foo`"));
    }
}
