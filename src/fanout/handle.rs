//! The cloneable way to talk to the registry: it hides the channel.

use tokio::sync::mpsc;

use crate::fanout::command::Command;

/// The cloneable way to talk to the registry. Its commands are the crate's
/// own; outside the crate a handle is only held (a benchmark driving a
/// [`crate::Registry`] directly), and the registry stops once every handle
/// is dropped.
#[derive(Debug, Clone)]
pub struct RegistryHandle {
    /// The registry's bounded queue ([`crate::fanout::command::COMMAND_QUEUE`]).
    commands: mpsc::Sender<Command>,
}

/// The registry has stopped (the server is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the registry has stopped")]
pub(crate) struct RegistryGone;

impl RegistryHandle {
    /// The handle of the registry reading `commands`' receiver.
    pub(crate) fn new(commands: mpsc::Sender<Command>) -> RegistryHandle {
        RegistryHandle { commands }
    }

    /// Sends a command, waiting for queue space.
    pub(crate) async fn send(&self, command: Command) -> Result<(), RegistryGone> {
        self.commands.send(command).await.map_err(|_| RegistryGone)
    }
}
