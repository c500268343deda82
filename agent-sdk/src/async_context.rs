//! Asynchronous handlers: Exchange's `GetAgentAsyncContext`, for agents that wait on the network.
//!
//! A handler that must ask DNS, an HTTP service or a database calls `event.async_context()`,
//! starts the work on its own thread or runtime, and returns `Ok(())` at once. The host then
//! waits for the completion without holding any of its threads, and raises the event to no other
//! agent meanwhile. When the work is done the agent calls [`complete`](crate::smtp_receive::AsyncContext::complete)
//! with a closure: the host runs it against the event (it may reject, edit the message, ... as
//! the handler could) and carries on with the next agent.
//!
//! Time limits count from the handler's call to the end of the completion, as for a synchronous
//! handler: past `timeLimitInMilliseconds` the call is reported too slow; a completion that has
//! not come after twice the limit is abandoned (the session or mail item gets the fault) and a
//! later completion is ignored. A context dropped without completing (the agent's task panicked
//! or was cancelled) completes as a fault.
//!
//! A host that predates async handlers offers no context: the SDK then waits for the completion
//! on the host's thread after the handler returns, so the agent still works, only without the
//! savings. The [`testing`](crate::testing) harness does the same.

use crate::abi::{
    CompletionBox, Continuation, ContinuationBox, Continuation_TO, EventHost, EventHostRef,
};
use crate::event_source::Source;
use crate::export::{guarded, Contained};
use crate::{AgentError, AgentResult, Logger};
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RString};
use std::cell::RefCell;
use std::sync::mpsc;

/// The rest of a handler, run against the event's host callbacks.
pub(crate) type Rest = Box<dyn for<'h> FnOnce(&mut (dyn EventHost + 'h)) -> AgentResult + Send>;

std::thread_local! {
    /// A handler's completion, when the host has no async support: the export glue waits on it
    /// after the handler returns (on the thread that called the handler).
    static WAITING: RefCell<Option<mpsc::Receiver<Rest>>> = const { RefCell::new(None) };
}

/// Takes the completion the glue must wait for, if the handler just went async on a host
/// without async support.
pub(crate) fn take_waiting() -> Option<mpsc::Receiver<Rest>> {
    WAITING.with(|w| w.borrow_mut().take())
}

enum Link {
    /// The host waits for the continuation.
    Host(CompletionBox),
    /// The export glue waits for it, on the host's thread.
    Local(mpsc::Sender<Rest>),
}

/// A pending call, untyped: what the typed contexts of each class wrap.
pub(crate) struct Pending {
    link: Option<Link>,
    logger: Logger,
}

impl Pending {
    pub(crate) fn begin(source: &mut Source<'_>) -> AgentResult<Pending> {
        if source.went_async {
            return Err(AgentError::msg(
                "async_context() was already called in this handler",
            ));
        }
        source.went_async = true;
        let logger = source.logger();
        let link = match source.host.begin_async().into_option() {
            Some(completion) => Link::Host(completion),
            None => {
                let (sender, receiver) = mpsc::channel();
                WAITING.with(|w| *w.borrow_mut() = Some(receiver));
                Link::Local(sender)
            }
        };
        Ok(Pending {
            link: Some(link),
            logger,
        })
    }

    pub(crate) fn logger(&self) -> Logger {
        self.logger.clone()
    }

    pub(crate) fn finish(mut self, rest: Rest) {
        self.send(rest);
    }

    fn send(&mut self, rest: Rest) {
        match self.link.take() {
            Some(Link::Host(completion)) => {
                let continuation: ContinuationBox =
                    Continuation_TO::from_value(Resume(Contained::new(rest)), TD_Opaque);
                completion.complete(continuation);
            }
            Some(Link::Local(sender)) => {
                let _ = sender.send(rest);
            }
            None => {}
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.link.is_some() {
            self.send(Box::new(|_| {
                Err(AgentError::msg(
                    "the agent dropped its async context without completing it",
                ))
            }));
        }
    }
}

/// The continuation as it crosses to the host: run inside the same guard as a handler.
struct Resume(Contained<Rest>);

impl Continuation for Resume {
    fn resume(self, mut host: EventHostRef<'_>) -> RResult<(), RString> {
        let rest = self.0.into_inner();
        guarded(|| rest(&mut host)).into()
    }
}

/// Writes the typed async context of one event class.
macro_rules! async_context {
    ($event:ident) => {
        /// A pending asynchronous call of one event (Exchange's `AgentAsyncContext`), from
        #[doc = concat!("[`", stringify!($event), "::async_context`].")]
        ///
        /// `Send` and `'static`: move it into the thread or task doing the work, then call
        /// [`complete`](Self::complete) exactly once. Dropping it without completing is a fault.
        pub struct AsyncContext<K> {
            pending: $crate::async_context::Pending,
            _kind: ::std::marker::PhantomData<fn() -> K>,
        }

        impl<K: 'static> AsyncContext<K> {
            pub(crate) fn new(pending: $crate::async_context::Pending) -> Self {
                Self {
                    pending,
                    _kind: ::std::marker::PhantomData,
                }
            }

            /// Completes the call: the host runs `rest` against the event, as if it were the
            /// end of the handler (it may act on the event as the handler could), then raises
            /// the event to the next agent. An `Err` from `rest` is a fault.
            pub fn complete<F>(self, rest: F)
            where
                F: for<'e> FnOnce(&mut $event<'e, K>) -> $crate::AgentResult + Send + 'static,
            {
                self.pending
                    .finish(Box::new(move |host| rest(&mut $event::new(host))))
            }

            /// The log of the agent's call, for lines written while the work runs.
            pub fn logger(&self) -> $crate::Logger {
                self.pending.logger()
            }
        }

        impl<K> ::std::fmt::Debug for AsyncContext<K> {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str("AsyncContext")
            }
        }
    };
}
pub(crate) use async_context;

#[cfg(test)]
mod tests {
    use crate::prelude::*;
    use crate::testing::{self, TestHost};

    /// Completes in two steps: the completion itself goes async again before it rejects.
    #[derive(Clone)]
    struct TwoSteps;

    #[agent]
    impl SmtpReceiveAgent for TwoSteps {
        fn create(_: &Parameters) -> Result<Self, AgentError> {
            Ok(TwoSteps)
        }

        fn on_mail_command(&mut self, event: &mut MailCommandEvent<'_>) -> AgentResult {
            let first = event.async_context()?;
            assert!(event.async_context().is_err(), "once per handler");
            std::thread::spawn(move || {
                first.complete(|event| {
                    agent_info!(event, "first step");
                    let second = event.async_context()?;
                    std::thread::spawn(move || {
                        second.complete(|event| {
                            event.reject(&SmtpResponse::new(450, "4.7.1", "Try later")?)
                        })
                    });
                    Ok(())
                })
            });
            Ok(())
        }
    }

    #[test]
    fn a_completion_may_go_async_again_and_the_harness_waits_for_both() {
        let mut agent = testing::create::<TwoSteps>(&[]).unwrap();
        let mut host = TestHost::smtp("192.0.2.1:5000").with_arg("from", "a@b.test");
        testing::run(&mut agent, Event::OnMailCommand, &mut host).unwrap();
        assert_eq!(host.rejection().unwrap().code(), 450);
        assert_eq!(host.log_lines().len(), 1);
        // Nothing is left waiting on this thread for the next handler.
        assert!(super::take_waiting().is_none());
    }
}
