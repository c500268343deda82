//! An agent that does nothing at OnNoopCommand: what a call across the ABI costs by itself.

use mta_agent_sdk::prelude::*;

#[derive(Clone)]
pub struct Noop;

#[agent]
impl SmtpReceiveAgent for Noop {
    fn create(_: &Parameters) -> Result<Self, AgentError> {
        Ok(Noop)
    }

    fn on_noop_command(&mut self, _event: &mut NoopCommandEvent<'_>) -> AgentResult {
        Ok(())
    }
}

export_agents!("Bench.NoopFactory" => Noop);
