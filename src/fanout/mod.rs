//! Fan-out: ordered events into bytes in each concerned client's socket.
//!
//! - `command`: the registry's messages, in (`Command`) and out (a stream
//!   resume's `FetchRequest`); above both the actor and its handle.
//! - `handle`: [`RegistryHandle`], the cloneable way in.
//! - `registry`: the actor that owns the follower graph and the connected
//!   clients, and applies what `resume` decides.
//! - `table`: the connection table: who is connected, each connection's
//!   staged bytes, and the flush to the outboxes.
//! - `client`: client handshakes and per-connection writers.
//! - [`outbox`]: the byte hand-off between the registry and one writer.
//!
//! Uses `resume`, `graph`, `ops`, `batch`, `settings`.

pub(crate) mod client;
pub(crate) mod command;
pub(crate) mod handle;
pub mod outbox;
pub(crate) mod registry;
pub(crate) mod table;

pub use handle::RegistryHandle;
pub use registry::Registry;
