//! Procedural macros of `mta-agent-sdk`. Use them through the SDK's re-exports
//! (`mta_agent_sdk::agent`, `mta_agent_sdk::export_agents`), never directly.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{parse_macro_input, Ident, ImplItem, ItemImpl, LitStr, Token, Type};

/// The classes and the handlers each may override, in protocol order.
const CLASSES: &[(&str, &str, &str, &[&str])] = &[
    (
        "SmtpReceiveAgent",
        "SmtpReceive",
        "dispatch_smtp_receive",
        &[
            "on_connect",
            "on_helo_command",
            "on_ehlo_command",
            "on_start_tls_command",
            "on_auth_command",
            "on_end_of_authentication",
            "on_mail_command",
            "on_rcpt_command",
            "on_data_command",
            "on_end_of_headers",
            "on_end_of_data",
            "on_help_command",
            "on_noop_command",
            "on_rset_command",
            "on_reject",
            "on_disconnect",
        ],
    ),
    (
        "RoutingAgent",
        "Routing",
        "dispatch_routing",
        &[
            "on_submitted_message",
            "on_resolved_message",
            "on_routed_message",
            "on_categorized_message",
        ],
    ),
    (
        "DeliveryAgent",
        "Delivery",
        "dispatch_delivery",
        &[
            "on_open_connection",
            "on_deliver_mail_item",
            "on_close_connection",
        ],
    ),
];

/// See `mta_agent_sdk::agent`.
#[proc_macro_attribute]
pub fn agent(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(Span::call_site(), "#[agent] takes no arguments")
            .to_compile_error()
            .into();
    }
    let item = parse_macro_input!(item as ItemImpl);
    match expand_agent(item) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

fn expand_agent(mut item: ItemImpl) -> syn::Result<TokenStream2> {
    let Some((_, trait_path, _)) = &item.trait_ else {
        return Err(syn::Error::new_spanned(
            &item.self_ty,
            "#[agent] goes on `impl SmtpReceiveAgent for ...`, `impl RoutingAgent for ...` or `impl DeliveryAgent for ...`",
        ));
    };
    let trait_path = trait_path.clone();
    let trait_name = trait_path
        .segments
        .last()
        .map(|s| s.ident.to_string())
        .unwrap_or_default();
    let Some(&(_, class, dispatch, handlers)) =
        CLASSES.iter().find(|(name, ..)| *name == trait_name)
    else {
        return Err(syn::Error::new_spanned(
            &trait_path,
            "#[agent] supports SmtpReceiveAgent, RoutingAgent and DeliveryAgent",
        ));
    };

    let mut events = Vec::new();
    for impl_item in &item.items {
        match impl_item {
            ImplItem::Fn(f) => {
                let name = f.sig.ident.to_string();
                if name.starts_with("on_") {
                    if !handlers.contains(&name.as_str()) {
                        return Err(syn::Error::new_spanned(
                            &f.sig.ident,
                            format!(
                                "{trait_name} has no event handler `{name}`; its handlers are: {}",
                                handlers.join(", ")
                            ),
                        ));
                    }
                    events.push(format_ident!("{}", camel_case(&name)));
                }
            }
            ImplItem::Macro(m) => {
                return Err(syn::Error::new_spanned(
                    m,
                    "#[agent] cannot see handlers written by a macro inside the impl block, so it could not declare their events; write each handler as a `fn`",
                ));
            }
            ImplItem::Const(c) if c.ident == "EVENTS" => {
                return Err(syn::Error::new_spanned(
                    &c.ident,
                    "EVENTS is written by #[agent] from the handlers you override; remove it",
                ));
            }
            _ => {}
        }
    }

    item.items.push(syn::parse_quote! {
        const EVENTS: ::mta_agent_sdk::EventSet = ::mta_agent_sdk::EventSet::EMPTY
            #( .with(::mta_agent_sdk::Event::#events) )*;
    });

    let self_ty = &item.self_ty;
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    let class = Ident::new(class, Span::call_site());
    let dispatch = Ident::new(dispatch, Span::call_site());
    let protocol = if class == "Delivery" {
        quote!(<Self as #trait_path>::DELIVERY_PROTOCOL)
    } else {
        quote!("")
    };

    Ok(quote! {
        #item

        impl #impl_generics ::mta_agent_sdk::__private::Exportable for #self_ty #where_clause {
            const CLASS: ::mta_agent_sdk::AgentClass = ::mta_agent_sdk::AgentClass::#class;
            const DELIVERY_PROTOCOL: &'static str = #protocol;
            const EVENTS: ::mta_agent_sdk::EventSet = <Self as #trait_path>::EVENTS;

            fn create(
                parameters: &::mta_agent_sdk::Parameters,
            ) -> ::core::result::Result<Self, ::mta_agent_sdk::AgentError> {
                <Self as #trait_path>::create(parameters)
            }

            fn dispatch(
                &mut self,
                event: ::mta_agent_sdk::Event,
                host: &mut (dyn ::mta_agent_sdk::abi::EventHost + '_),
            ) -> ::mta_agent_sdk::AgentResult {
                ::mta_agent_sdk::__private::#dispatch::<Self>(self, event, host)
            }
        }
    })
}

/// `on_end_of_data` -> `OnEndOfData`.
fn camel_case(snake: &str) -> String {
    snake
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

struct Export {
    name: LitStr,
    ty: Type,
}

impl Parse for Export {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let name: LitStr = input.parse()?;
        input.parse::<Token![=>]>()?;
        let ty: Type = input.parse()?;
        Ok(Self { name, ty })
    }
}

/// See `mta_agent_sdk::export_agents`.
#[proc_macro]
pub fn export_agents(input: TokenStream) -> TokenStream {
    let parser = Punctuated::<Export, Token![,]>::parse_terminated;
    let exports = parse_macro_input!(input with parser);
    if exports.is_empty() {
        return syn::Error::new(
            Span::call_site(),
            "export_agents! needs at least one `\"Factory.Name\" => AgentType`",
        )
        .to_compile_error()
        .into();
    }
    let mut seen = std::collections::HashSet::new();
    for export in &exports {
        if !seen.insert(export.name.value()) {
            return syn::Error::new_spanned(&export.name, "factory name exported twice")
                .to_compile_error()
                .into();
        }
    }
    let names = exports.iter().map(|e| &e.name);
    let types = exports.iter().map(|e| &e.ty);
    let symbol = Ident::new(
        &abi_stable_shared::mangled_root_module_loader_name(),
        Span::call_site(),
    );
    quote! {
        #[doc(hidden)]
        pub fn __mta_agent_library() -> ::mta_agent_sdk::abi::AgentLibraryRef {
            use ::mta_agent_sdk::__private::abi_stable::prefix_type::PrefixTypeTrait as _;
            extern "C" fn factories() -> ::mta_agent_sdk::__private::abi_stable::std_types::RVec<
                ::mta_agent_sdk::abi::FactoryDescriptor,
            > {
                ::std::vec![
                    #( ::mta_agent_sdk::__private::descriptor::<#types>(#names) ),*
                ]
                .into()
            }
            ::mta_agent_sdk::abi::AgentLibrary { factories }.leak_into_prefix()
        }

        #[doc(hidden)]
        #[unsafe(no_mangle)]
        pub static #symbol: ::mta_agent_sdk::__private::abi_stable::library::LibHeader = {
            extern "C" fn erased_module(
            ) -> ::mta_agent_sdk::__private::abi_stable::library::RootModuleResult {
                ::mta_agent_sdk::__private::abi_stable::library::__call_root_module_loader(
                    __mta_agent_library,
                )
            }
            unsafe {
                ::mta_agent_sdk::__private::abi_stable::library::LibHeader::from_constructor::<
                    ::mta_agent_sdk::abi::AgentLibraryRef,
                >(
                    erased_module,
                    ::mta_agent_sdk::__private::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    }
    .into()
}
