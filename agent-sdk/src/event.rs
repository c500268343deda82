//! The events of the transport pipeline and the three agent classes that handle them.
//!
//! The numbering of [`Event`] is part of the ABI: new events are only ever appended.

use abi_stable::StableAbi;
use std::fmt;

/// The three classes of transport agent, as in Exchange's transport pipeline.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AgentClass {
    /// Handles SMTP receive events: runs per SMTP session in the Front End and Transport services.
    SmtpReceive = 0,
    /// Handles categorizer events: runs per mail item in the Transport service.
    Routing = 1,
    /// Delivers to a non-SMTP system: runs per delivery connection of a Delivery Agent connector.
    Delivery = 2,
}

impl AgentClass {
    /// All classes, in the order the pipeline meets them.
    pub const ALL: [AgentClass; 3] = [Self::SmtpReceive, Self::Routing, Self::Delivery];

    /// The short `baseType` name (`SmtpReceiveAgent`, `RoutingAgent`, `DeliveryAgent`).
    pub const fn short_name(self) -> &'static str {
        match self {
            Self::SmtpReceive => "SmtpReceiveAgent",
            Self::Routing => "RoutingAgent",
            Self::Delivery => "DeliveryAgent",
        }
    }

    /// The fully-qualified `baseType` Exchange writes in its agents files.
    pub const fn exchange_name(self) -> &'static str {
        match self {
            Self::SmtpReceive => "Microsoft.Exchange.Data.Transport.Smtp.SmtpReceiveAgent",
            Self::Routing => "Microsoft.Exchange.Data.Transport.Routing.RoutingAgent",
            Self::Delivery => "Microsoft.Exchange.Data.Transport.Delivery.DeliveryAgent",
        }
    }

    /// Parses a `baseType` value: the short name or Exchange's fully-qualified one.
    pub fn from_base_type(value: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|class| value == class.short_name() || value == class.exchange_name())
    }

    /// The events this class can handle, in protocol order.
    pub fn events(self) -> impl Iterator<Item = Event> {
        Event::ALL
            .into_iter()
            .filter(move |event| event.class() == self)
    }
}

impl fmt::Display for AgentClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

macro_rules! events {
    ($( $(#[$doc:meta])* $variant:ident = $n:literal, $class:ident, $handler:literal; )*) => {
        /// Every event of the transport pipeline, in protocol order within each class.
        #[repr(u8)]
        #[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Event {
            $( $(#[$doc])* $variant = $n, )*
        }

        impl Event {
            /// All events: SMTP receive, then categorizer, then delivery, each in protocol order.
            pub const ALL: [Event; 23] = [$(Event::$variant),*];

            /// The class of agent that handles this event.
            pub const fn class(self) -> AgentClass {
                match self { $(Event::$variant => AgentClass::$class,)* }
            }

            /// The event's name as Exchange spells it (`OnEndOfData`).
            pub const fn name(self) -> &'static str {
                match self { $(Event::$variant => stringify!($variant),)* }
            }

            /// The name of the agent method that handles it (`on_end_of_data`).
            pub const fn handler(self) -> &'static str {
                match self { $(Event::$variant => $handler,)* }
            }
        }
    };
}

events! {
    /// A client connected.
    OnConnect = 0, SmtpReceive, "on_connect";
    /// The client sent HELO.
    OnHeloCommand = 1, SmtpReceive, "on_helo_command";
    /// The client sent EHLO.
    OnEhloCommand = 2, SmtpReceive, "on_ehlo_command";
    /// The client sent STARTTLS.
    OnStartTlsCommand = 3, SmtpReceive, "on_start_tls_command";
    /// The client sent AUTH.
    OnAuthCommand = 4, SmtpReceive, "on_auth_command";
    /// The client finished authenticating.
    OnEndOfAuthentication = 5, SmtpReceive, "on_end_of_authentication";
    /// The client sent MAIL FROM.
    OnMailCommand = 6, SmtpReceive, "on_mail_command";
    /// The client sent RCPT TO.
    OnRcptCommand = 7, SmtpReceive, "on_rcpt_command";
    /// The client sent DATA.
    OnDataCommand = 8, SmtpReceive, "on_data_command";
    /// The message's header block has been received.
    OnEndOfHeaders = 9, SmtpReceive, "on_end_of_headers";
    /// The whole message has been received (never raised in the Front End service).
    OnEndOfData = 10, SmtpReceive, "on_end_of_data";
    /// The client sent HELP.
    OnHelpCommand = 11, SmtpReceive, "on_help_command";
    /// The client sent NOOP.
    OnNoopCommand = 12, SmtpReceive, "on_noop_command";
    /// The client sent RSET.
    OnRsetCommand = 13, SmtpReceive, "on_rset_command";
    /// The server answered with a 4xx or 5xx reply.
    OnReject = 14, SmtpReceive, "on_reject";
    /// The session ended.
    OnDisconnect = 15, SmtpReceive, "on_disconnect";
    /// A mail item entered the Submission queue.
    OnSubmittedMessage = 16, Routing, "on_submitted_message";
    /// Recipients have been resolved; routing overrides may be set.
    OnResolvedMessage = 17, Routing, "on_resolved_message";
    /// Next hops have been chosen.
    OnRoutedMessage = 18, Routing, "on_routed_message";
    /// The categorizer is done with the mail item.
    OnCategorizedMessage = 19, Routing, "on_categorized_message";
    /// A delivery queue opens a connection to its next hop.
    OnOpenConnection = 20, Delivery, "on_open_connection";
    /// A mail item is to be delivered over the connection.
    OnDeliverMailItem = 21, Delivery, "on_deliver_mail_item";
    /// The delivery connection closes.
    OnCloseConnection = 22, Delivery, "on_close_connection";
}

impl Event {
    /// Finds an event by its Exchange name (`OnConnect`) or handler name (`on_connect`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|event| event.name() == name || event.handler() == name)
    }

    const fn bit(self) -> u64 {
        1 << (self as u8)
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of events: the ones an agent handles.
///
/// `#[agent]` computes it from the methods the impl block overrides, so it cannot drift from the
/// code; the host skips an agent for every event outside its set.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct EventSet(u64);

impl EventSet {
    /// No event.
    pub const EMPTY: EventSet = EventSet(0);

    /// This set with `event` added.
    pub const fn with(self, event: Event) -> Self {
        EventSet(self.0 | event.bit())
    }

    /// This set without `event`.
    pub const fn without(self, event: Event) -> Self {
        EventSet(self.0 & !event.bit())
    }

    /// Whether `event` is in the set.
    pub const fn contains(self, event: Event) -> bool {
        self.0 & event.bit() != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The events of the set, in protocol order.
    pub fn iter(self) -> impl Iterator<Item = Event> {
        Event::ALL
            .into_iter()
            .filter(move |event| self.contains(*event))
    }

    /// The raw bits, for storage and diagnostics.
    pub const fn bits(self) -> u64 {
        self.0
    }
}

impl FromIterator<Event> for EventSet {
    fn from_iter<I: IntoIterator<Item = Event>>(iter: I) -> Self {
        iter.into_iter().fold(EventSet::EMPTY, EventSet::with)
    }
}

impl fmt::Debug for EventSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_round_trips_through_its_names() {
        for event in Event::ALL {
            assert_eq!(Event::from_name(event.name()), Some(event));
            assert_eq!(Event::from_name(event.handler()), Some(event));
        }
        assert_eq!(AgentClass::SmtpReceive.events().count(), 16);
        assert_eq!(AgentClass::Routing.events().count(), 4);
        assert_eq!(AgentClass::Delivery.events().count(), 3);
    }

    #[test]
    fn base_types_accept_short_and_exchange_names() {
        for class in AgentClass::ALL {
            assert_eq!(AgentClass::from_base_type(class.short_name()), Some(class));
            assert_eq!(
                AgentClass::from_base_type(class.exchange_name()),
                Some(class)
            );
        }
        assert_eq!(AgentClass::from_base_type("smtpreceiveagent"), None);
    }

    #[test]
    fn event_set_keeps_protocol_order() {
        let set = EventSet::EMPTY
            .with(Event::OnEndOfData)
            .with(Event::OnConnect);
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            [Event::OnConnect, Event::OnEndOfData]
        );
        assert!(!set.without(Event::OnConnect).contains(Event::OnConnect));
    }
}
