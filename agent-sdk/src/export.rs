//! The library side of the boundary, written once here so agent authors never write it.
//!
//! `#[agent]` implements [`Exportable`] for the agent type and [`export_agents!`] lists them in
//! the library's root module. Every call from the host enters through this module, inside
//! `catch_unwind`: a panic in an agent becomes an error the host turns into a fault, and never
//! unwinds across the boundary (which would abort the process).

use crate::abi::{
    AgentFactory, AgentFactoryBox, AgentFactory_TO, AgentInstance, AgentInstanceBox,
    AgentInstance_TO, EventHost, EventHostRef, FactoryDescriptor,
};
use crate::delivery::{DeliveryAgent, DeliveryEvent};
use crate::routing::{RoutingAgent, RoutingEvent};
use crate::smtp_receive::{SmtpEvent, SmtpReceiveAgent};
use crate::{AgentClass, AgentError, AgentResult, Event, EventSet, Parameters};
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RStr, RString, RVec, Tuple2};
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Implemented by `#[agent]`: how to describe and drive an agent type across the boundary.
pub trait Exportable: Clone + Send + Sync + 'static {
    /// The class of agent.
    const CLASS: AgentClass;
    /// The delivery protocol (delivery agents), empty otherwise.
    const DELIVERY_PROTOCOL: &'static str;
    /// The events handled.
    const EVENTS: EventSet;
    /// Builds the agent from its parameters.
    fn create(parameters: &Parameters) -> Result<Self, AgentError>;
    /// Calls the handler of `event`.
    fn dispatch(&mut self, event: Event, host: &mut (dyn EventHost + '_)) -> AgentResult;
}

/// The descriptor [`export_agents!`] lists for one factory.
pub fn descriptor<A: Exportable>(name: &'static str) -> FactoryDescriptor {
    FactoryDescriptor {
        name: RStr::from_str(name),
        class: A::CLASS,
        delivery_protocol: RStr::from_str(A::DELIVERY_PROTOCOL),
        events: A::EVENTS,
        new_factory: new_factory::<A>,
    }
}

extern "C" fn new_factory<A: Exportable>(
    parameters: RVec<Tuple2<RString, RString>>,
) -> RResult<AgentFactoryBox, RString> {
    let parameters = Parameters::from_pairs(
        parameters
            .into_iter()
            .map(|pair| (pair.0.into_string(), pair.1.into_string())),
    );
    guarded(|| A::create(&parameters))
        .map(|prototype| {
            AgentFactory_TO::from_value(Prototype(Contained::new(prototype)), TD_Opaque)
        })
        .into()
}

/// Owns a value of agent code and drops it inside `catch_unwind`: a panic in an agent's `Drop`
/// must not unwind into the host either.
pub(crate) struct Contained<A>(ManuallyDrop<A>);

impl<A> Contained<A> {
    pub(crate) fn new(value: A) -> Self {
        Self(ManuallyDrop::new(value))
    }

    /// The value, out of the guard (its drop is then the caller's business).
    pub(crate) fn into_inner(mut self) -> A {
        // SAFETY: taken exactly once; `forget` keeps `Drop` from dropping it again.
        let value = unsafe { ManuallyDrop::take(&mut self.0) };
        std::mem::forget(self);
        value
    }
}

impl<A> Drop for Contained<A> {
    fn drop(&mut self) {
        // SAFETY: the value is dropped exactly once, here, and never used again.
        let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
            ManuallyDrop::drop(&mut self.0)
        }));
    }
}

/// The factory: the agent built from the parameters, cloned for each instance.
struct Prototype<A>(Contained<A>);

impl<A: Exportable> AgentFactory for Prototype<A> {
    fn create_agent(&self) -> RResult<AgentInstanceBox, RString> {
        guarded(|| Ok(Contained::new((*self.0 .0).clone())))
            .map(|agent| AgentInstance_TO::from_value(Instance(agent), TD_Opaque))
            .into()
    }
}

struct Instance<A>(Contained<A>);

impl<A: Exportable> AgentInstance for Instance<A> {
    fn handle(&mut self, event: Event, mut host: EventHostRef<'_>) -> RResult<(), RString> {
        if !A::EVENTS.contains(event) {
            return RResult::ROk(());
        }
        let mut result = guarded(|| self.0 .0.dispatch(event, &mut host));
        // The handler (or its completion, again) went async on a host that cannot wait without
        // a thread: wait here. A fault drops the wait.
        while let Some(waiting) = crate::async_context::take_waiting() {
            if result.is_err() {
                break;
            }
            result = match waiting.recv() {
                Ok(rest) => guarded(|| rest(&mut host)),
                Err(_) => Err("the async context was lost without completing".into()),
            };
        }
        result.into()
    }
}

std::thread_local! {
    /// Set while this thread runs agent code inside [`guarded`]: the panic hook then records
    /// where the agent panicked instead of printing it (the host logs the fault, naming the
    /// agent and its library).
    static PANICKED_AT: std::cell::RefCell<Option<Option<String>>> =
        const { std::cell::RefCell::new(None) };
}

/// Installs, once per library (each agent library has its own copy of std, so its own hook),
/// a panic hook that records the location of panics raised inside agent calls and leaves every
/// other panic to the hook that was there before.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_call = PANICKED_AT.with(|p| {
                let mut p = p.borrow_mut();
                match p.as_mut() {
                    Some(slot) => {
                        *slot = info.location().map(|l| l.to_string());
                        true
                    }
                    None => false,
                }
            });
            if !in_call {
                previous(info);
            }
        }));
    });
}

/// Runs agent code, turning an error or a panic into the text of a fault.
pub(crate) fn guarded<T>(f: impl FnOnce() -> AgentResult<T>) -> Result<T, RString> {
    install_panic_hook();
    let outer = PANICKED_AT.with(|p| p.borrow_mut().replace(None));
    let result = catch_unwind(AssertUnwindSafe(f));
    let location = PANICKED_AT.with(|p| std::mem::replace(&mut *p.borrow_mut(), outer));
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(RString::from(error.message())),
        Err(payload) => {
            let text = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_string());
            Err(RString::from(match location.flatten() {
                Some(at) => format!("agent panicked at {at}: {text}"),
                None => format!("agent panicked: {text}"),
            }))
        }
    }
}

/// Calls `agent`'s SMTP receive handler for `event`; used by the code `#[agent]` writes.
pub fn dispatch_smtp_receive<A: SmtpReceiveAgent>(
    agent: &mut A,
    event: Event,
    host: &mut (dyn EventHost + '_),
) -> AgentResult {
    macro_rules! call {
        ($method:ident) => {
            agent.$method(&mut SmtpEvent::new(host))
        };
    }
    match event {
        Event::OnConnect => call!(on_connect),
        Event::OnHeloCommand => call!(on_helo_command),
        Event::OnEhloCommand => call!(on_ehlo_command),
        Event::OnStartTlsCommand => call!(on_start_tls_command),
        Event::OnAuthCommand => call!(on_auth_command),
        Event::OnEndOfAuthentication => call!(on_end_of_authentication),
        Event::OnMailCommand => call!(on_mail_command),
        Event::OnRcptCommand => call!(on_rcpt_command),
        Event::OnDataCommand => call!(on_data_command),
        Event::OnEndOfHeaders => call!(on_end_of_headers),
        Event::OnEndOfData => call!(on_end_of_data),
        Event::OnHelpCommand => call!(on_help_command),
        Event::OnNoopCommand => call!(on_noop_command),
        Event::OnRsetCommand => call!(on_rset_command),
        Event::OnReject => call!(on_reject),
        Event::OnDisconnect => call!(on_disconnect),
        _ => Ok(()),
    }
}

/// Calls `agent`'s categorizer handler for `event`; used by the code `#[agent]` writes.
pub fn dispatch_routing<A: RoutingAgent>(
    agent: &mut A,
    event: Event,
    host: &mut (dyn EventHost + '_),
) -> AgentResult {
    match event {
        Event::OnSubmittedMessage => agent.on_submitted_message(&mut RoutingEvent::new(host)),
        Event::OnResolvedMessage => agent.on_resolved_message(&mut RoutingEvent::new(host)),
        Event::OnRoutedMessage => agent.on_routed_message(&mut RoutingEvent::new(host)),
        Event::OnCategorizedMessage => agent.on_categorized_message(&mut RoutingEvent::new(host)),
        _ => Ok(()),
    }
}

/// Calls `agent`'s delivery handler for `event`; used by the code `#[agent]` writes.
pub fn dispatch_delivery<A: DeliveryAgent>(
    agent: &mut A,
    event: Event,
    host: &mut (dyn EventHost + '_),
) -> AgentResult {
    match event {
        Event::OnOpenConnection => agent.on_open_connection(&mut DeliveryEvent::new(host)),
        Event::OnDeliverMailItem => agent.on_deliver_mail_item(&mut DeliveryEvent::new(host)),
        Event::OnCloseConnection => agent.on_close_connection(&mut DeliveryEvent::new(host)),
        _ => Ok(()),
    }
}

/// Runs one event through an agent exactly as the host does, through the boundary's glue
/// (`catch_unwind` included). Used by [`crate::testing`].
pub(crate) fn run_through_glue<A: Exportable, H: EventHost>(
    agent: &mut A,
    event: Event,
    host: &mut H,
) -> Result<(), String> {
    let mut instance = Instance(Contained::new(agent.clone()));
    let host = crate::abi::EventHost_TO::from_ptr(host, TD_Opaque);
    let result = instance.handle(event, host).into_result();
    *agent = (*instance.0 .0).clone();
    result.map_err(RString::into_string)
}
