//! How the registry attaches a resumable connection: from its own
//! sessions (the local verdict), or on a gateway as the stream-resume state
//! machine ([`crate::resume::stream`]) decides, with the fetch it asks for
//! and the lines it brings back. A resumable connection's verdict and
//! replay are flushed between two batches, so live lines follow exactly.

use std::sync::Arc;
use std::time::Instant;

use followermaze_protocol::resume::{StreamId, Verdict};
use followermaze_protocol::{Seq, UserId};

use super::{Client, Registry};
use crate::fanout::command::{ConnId, FetchRequest, Resume, Resumed};
use crate::fanout::outbox::Outbox;
use crate::fanout::table::Sink;
use crate::ops::stats::Stats;
use crate::resume::replay::Replay;
use crate::resume::stream::{Ask, Attach, Decision, Position};

impl Registry {
    /// Registers a resumable connection, as the stream-resume state machine
    /// decides on a gateway, from local sessions otherwise.
    pub(super) fn attach(&mut self, ask: Ask, client: Client) {
        let Some(remote) = &mut self.remote else {
            return self.attach_local(ask, client);
        };
        let at = Position {
            seq: self.last_seq.unwrap_or(0),
            stream: self.sessions.stream(),
            now: Instant::now(),
        };
        let can_replay = self.sessions.can_replay(ask.user, ask.after);
        let following = self.router.following(ask.user);
        match remote
            .resumes
            .decide(ask, client, at, can_replay, following)
        {
            Decision::Local(client) => self.attach_local(ask, client),
            Decision::Held => {}
            Decision::Attach(attach) => self.attach_fetched(ask.user, at.stream, attach),
            Decision::Fetch { conn, plan } => {
                let Ok(permit) = remote.fetches.try_reserve() else {
                    // Busy or gone: the local verdict, at once.
                    return self.attach_local(ask, conn);
                };
                let (id, outbox) = conn;
                remote
                    .resumes
                    .fetch_started(ask.user, ask.after, (id, outbox.clone()));
                let max_bytes = self.sessions.settings().limits.per_session_bytes;
                let (user, after, upto) = (ask.user, ask.after, at.seq);
                let resume = Resume {
                    user,
                    conn: id,
                    outbox,
                    stream: at.stream,
                    after,
                    upto,
                };
                permit.send(FetchRequest {
                    resume,
                    plan,
                    max_bytes,
                });
                self.reserve_session(user, upto);
                tracing::debug!(user, conn = id, after, upto, "resuming from the stream");
            }
        }
    }

    /// Opens `user`'s session at `position` if it is not open, with its
    /// retainer.
    pub(super) fn reserve_session(&mut self, user: UserId, position: Seq) {
        if !self.retainers.contains_key(&user) {
            self.make_room_for_a_session();
        }
        if self.sessions.reserve(user, position, Instant::now()) {
            let key = self.insert(user, 0, Sink::Retainer);
            self.retainers.insert(user, key);
        }
        self.publish_session_gauges();
    }

    /// A fetch is back: every connection that waited for it and is still
    /// open is attached, each from its own position.
    pub(super) fn fetched(&mut self, Resumed { resume, lines }: Resumed) {
        let Some(remote) = &mut self.remote else {
            return;
        };
        let Resume {
            user,
            conn,
            outbox,
            stream,
            after,
            upto,
        } = resume;
        let attaches = remote
            .resumes
            .fetched(user, (after, upto), stream, lines, (conn, outbox));
        for attach in attaches {
            // A connection that ended while it waited has nobody to tell.
            if attach.conn.1.closed().is_none() {
                self.attach_fetched(user, stream, attach);
            }
        }
    }

    /// Step 3 of a resume from the stream: `lines` are the user's in
    /// (`after`, `upto`]. If the session still holds everything above
    /// `upto`, the client gets `#OK` at `after`, `lines`, the retained lines
    /// above `upto`, then live ones; otherwise its local verdict.
    pub(super) fn attach_fetched(
        &mut self,
        user: UserId,
        stream: StreamId,
        attach: Attach<Client>,
    ) {
        let Attach {
            conn: (id, outbox),
            after,
            upto,
            lines,
            open,
        } = attach;
        if open {
            self.reserve_session(user, upto);
        }
        let mut staged = Vec::new();
        let attached = lines.is_some()
            && (self.sessions).attach_fetched(user, stream, after, upto, &mut staged);
        let Some(lines) = lines.filter(|_| attached) else {
            let ask = Ask {
                user,
                stream: Some(stream),
                after,
            };
            return self.attach_local(ask, (id, outbox));
        };
        let fault_reset_every = self.sessions.settings().fault_reset_every;
        let mut replay = Replay::new(staged, after, fault_reset_every);
        for line in lines.split_inclusive(|&byte| byte == b'\n') {
            replay.line(line);
        }
        self.sessions.replay(user, upto, |line| replay.line(line));
        let replayed = replay.lines;
        Stats::add(&self.stats.resumes_ok, 1);
        Stats::add(&self.stats.stream_resumes, 1);
        Stats::add(&self.stats.replayed_lines, replayed);
        tracing::debug!(
            user,
            conn = id,
            after,
            upto,
            replayed,
            "resumable client attached from the stream"
        );
        self.go_live(user, id, outbox, replay);
    }

    /// Registers a resumable connection from this process's own sessions:
    /// the verdict and the lines it missed are staged and flushed now,
    /// between two batches, so live lines from the next batch on follow
    /// them exactly.
    pub(super) fn attach_local(&mut self, ask: Ask, (id, outbox): Client) {
        let Ask {
            user,
            stream,
            after,
        } = ask;
        if !self.retainers.contains_key(&user) {
            self.make_room_for_a_session();
        }
        let position = self.position();
        let mut staged = Vec::new();
        let attached = (self.sessions).attach(user, stream, after, position, &mut staged);
        if attached.opened {
            let key = self.insert(user, 0, Sink::Retainer);
            self.retainers.insert(user, key);
        }
        let fault_reset_every = self.sessions.settings().fault_reset_every;
        let mut replay = Replay::new(staged, attached.seq, fault_reset_every);
        (self.sessions).replay(user, attached.seq, |line| replay.line(line));
        let replayed = replay.lines;
        if stream.is_some() {
            let counter = match attached.verdict {
                Verdict::Ok => &self.stats.resumes_ok,
                Verdict::Gap => &self.stats.resumes_gap,
            };
            Stats::add(counter, 1);
            Stats::add(&self.stats.replayed_lines, replayed);
        }
        let (verdict, seq) = (attached.verdict, attached.seq);
        tracing::debug!(
            user,
            conn = id,
            after,
            ?verdict,
            seq,
            replayed,
            "resumable client attached"
        );
        self.go_live(user, id, outbox, replay);
    }

    /// Adds a resumable connection whose verdict and replay are `replay`,
    /// and flushes them now, between two batches: live lines from the next
    /// batch on follow them exactly.
    pub(super) fn go_live(
        &mut self,
        user: UserId,
        id: ConnId,
        outbox: Arc<Outbox>,
        replay: Replay,
    ) {
        let Replay {
            staged,
            tally,
            resetting,
            ..
        } = replay;
        let sink = Sink::Resumable {
            outbox,
            tally,
            resetting,
        };
        let key = self.insert(user, id, sink);
        self.table.stage_bytes(key, staged);
        self.flush_touched(Instant::now());
        self.publish_session_gauges();
    }
}
