//! A resumable connection's first bytes: its verdict, then the lines
//! replayed to it, counted into the tally its checkpoints carry. Fault
//! injection (`faultResetEvery`) may stop the replay early; the connection
//! is then reset after what was staged.

use followermaze_protocol::Seq;

use crate::resume::session::Tally;

/// A resumable connection's first bytes being staged; see the module doc.
#[derive(Debug)]
pub(crate) struct Replay {
    /// The verdict line, then the replayed lines.
    pub(crate) staged: Vec<u8>,
    /// Count and CRC of the replayed lines.
    pub(crate) tally: Tally,
    /// Lines replayed.
    pub(crate) lines: u64,
    /// Fault injection asked for a reset: nothing more is staged.
    pub(crate) resetting: bool,
}

impl Replay {
    /// A replay after the verdict already in `staged`, whose `<seq>` is
    /// `verdict_seq`.
    pub(crate) fn new(staged: Vec<u8>, verdict_seq: Seq, fault_reset_every: u64) -> Replay {
        Replay {
            staged,
            tally: Tally::new(verdict_seq, fault_reset_every),
            lines: 0,
            resetting: false,
        }
    }

    /// Stages one replayed line, unless a reset is due.
    pub(crate) fn line(&mut self, line: &[u8]) {
        if !self.resetting {
            self.resetting = self.tally.push_line(&mut self.staged, line);
            self.lines += 1;
        }
    }
}
