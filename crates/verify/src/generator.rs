//! The deterministic event stream: which events, in which batches, in which
//! order on the wire, and who must hear of each.
//!
//! Pure computation over [`Rng`] and [`Graph`]; no I/O, no clock. The same
//! seed and settings give the same batches, byte for byte, on every run and
//! every machine. Events are drawn and applied to the graph in sequence
//! order (a status update's audience depends on every follow before it),
//! then each batch's send order is shuffled.
//!
//! Cost per event is a few random draws and array lookups; nothing is
//! allocated once the batch buffers have grown to the largest batch.

use super::graph::Graph;
use super::line::{Event, Kind};
use super::rng::Rng;
use followermaze_protocol::Seq;

/// Sub-streams of the seed, so each purpose draws its own numbers.
const USERS_STREAM: u64 = 1;
/// See [`USERS_STREAM`].
const EVENTS_STREAM: u64 = 2;

/// Event-type weights are in parts per million.
const PPM: u64 = 1_000_000;

/// Which mix of events to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// The classic verifier's mix: about 55% status updates, 15% each
    /// follows, unfollows and private messages, 0.01% broadcasts.
    Classic,
    /// Fan-out heavy: 0.5% broadcasts, and follows outpacing unfollows so
    /// users gather hundreds of followers and status updates reach many
    /// clients. Notifications per event grow as the graph fills (tens per
    /// event after a few million), so size `totalEvents` to match.
    Fanout,
}

impl Profile {
    /// Weights in parts per million, in [`Kind::ALL`] order: follow,
    /// unfollow, broadcast, private, status.
    fn weights(self) -> [u64; 5] {
        match self {
            Profile::Classic => [150_000, 150_000, 100, 150_000, 549_900],
            Profile::Fanout => [250_000, 200_000, 5_000, 95_000, 450_000],
        }
    }

    /// The name used in the `profile` variable.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Classic => "classic",
            Profile::Fanout => "fanout",
        }
    }
}

impl std::str::FromStr for Profile {
    type Err = String;

    fn from_str(text: &str) -> Result<Profile, String> {
        match text.to_ascii_lowercase().as_str() {
            "classic" => Ok(Profile::Classic),
            "fanout" => Ok(Profile::Fanout),
            _ => Err("expected classic or fanout".into()),
        }
    }
}

/// The users the client connections announce, deterministic from `seed`:
/// distinct users drawn from `1..=users` while there are enough, and every
/// user in turn again beyond that (several connections per user).
pub(crate) fn client_users(seed: u64, users: u32, clients: usize) -> Vec<u32> {
    let mut rng = Rng::for_stream(seed, USERS_STREAM);
    let mut pool: Vec<u32> = (1..=users).collect();
    let mut chosen = Vec::with_capacity(clients);
    while chosen.len() < clients {
        // A partial Fisher-Yates shuffle of the pool: each pass yields
        // distinct users.
        let take = (clients - chosen.len()).min(pool.len());
        for i in 0..take {
            let j = i + rng.below((pool.len() - i) as u64) as usize;
            pool.swap(i, j);
            chosen.push(pool[i]);
        }
    }
    chosen
}

/// One notification a correct server must send: event `event` of the batch
/// goes to client connection `client`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Note {
    /// The client connection's index.
    pub(crate) client: u32,
    /// Index into [`Batch::events`].
    pub(crate) event: u32,
}

/// One batch: a contiguous range of sequence numbers.
#[derive(Debug, Default, Clone)]
pub(crate) struct Batch {
    /// The events, in sequence order.
    pub(crate) events: Vec<Event>,
    /// Who must be notified, in sequence order (for each client, the order
    /// its notifications must arrive in).
    pub(crate) notes: Vec<Note>,
    /// The send order: indexes into `events`, shuffled.
    pub(crate) order: Vec<u32>,
}

impl Batch {
    fn clear(&mut self) {
        self.events.clear();
        self.notes.clear();
        self.order.clear();
    }
}

/// Events generated so far, by kind: follow, unfollow, broadcast, private,
/// status (the protocol's `F`, `U`, `B`, `P`, `S`), in that order.
pub type MixCounts = [u64; 5];

/// What the generator needs to know.
#[derive(Debug, Clone)]
pub(crate) struct GeneratorSettings {
    /// Decides everything.
    pub(crate) seed: u64,
    /// Users are `1..=users`.
    pub(crate) users: u32,
    /// The user of each client connection (see [`client_users`]).
    pub(crate) client_users: Vec<u32>,
    /// Batches are `1..=max_batch` events.
    pub(crate) max_batch: u32,
    /// The event mix.
    pub(crate) profile: Profile,
}

/// See the module doc.
#[derive(Debug)]
pub(crate) struct Generator {
    /// Draws for events, batch sizes and shuffles.
    rng: Rng,
    /// The model of who follows whom and who is connected.
    graph: Graph,
    /// Cumulative event-type thresholds, parts per million.
    thresholds: [u64; 5],
    /// Users are `1..=users`.
    users: u32,
    /// Client connections.
    clients: u32,
    /// Largest batch.
    max_batch: u64,
    /// The next sequence number to generate.
    next_seq: Seq,
    /// The last sequence number; it is always a broadcast, so every client's
    /// stream ends with a known line.
    last_seq: Seq,
    /// Events generated, by kind.
    mix: MixCounts,
}

impl Generator {
    /// A generator for sequence numbers `first_seq..=last_seq`. Events
    /// depend on their position after `first_seq`, not on `first_seq`
    /// itself, so streams that start later are the same events renumbered.
    pub(crate) fn new(settings: &GeneratorSettings, first_seq: Seq, last_seq: Seq) -> Generator {
        assert!(first_seq >= 1 && first_seq <= last_seq, "a non-empty range");
        let mut thresholds = settings.profile.weights();
        for i in 1..thresholds.len() {
            thresholds[i] += thresholds[i - 1];
        }
        debug_assert_eq!(thresholds[4], PPM);
        Generator {
            rng: Rng::for_stream(settings.seed, EVENTS_STREAM),
            graph: Graph::new(settings.users, &settings.client_users),
            thresholds,
            users: settings.users,
            clients: settings.client_users.len() as u32,
            max_batch: u64::from(settings.max_batch.max(1)),
            next_seq: first_seq,
            last_seq,
            mix: [0; 5],
        }
    }

    /// Fills `batch` with the next batch; false (and an empty batch) once
    /// every sequence number has been generated.
    pub(crate) fn next_batch(&mut self, batch: &mut Batch) -> bool {
        batch.clear();
        if self.next_seq > self.last_seq {
            return false;
        }
        let size = 1 + self.rng.below(self.max_batch);
        let end = self.last_seq.min(self.next_seq + size - 1);
        for seq in self.next_seq..=end {
            let event = self.draw(seq, batch.events.len() as u32, &mut batch.notes);
            self.mix[event.kind as usize] += 1;
            batch.events.push(event);
        }
        self.next_seq = end + 1;
        let n = batch.events.len();
        batch.order.extend(0..n as u32);
        for i in (1..n).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            batch.order.swap(i, j);
        }
        true
    }

    /// A user in `1..=users`.
    #[inline]
    fn user(&mut self) -> u32 {
        1 + self.rng.below(u64::from(self.users)) as u32
    }

    /// A user in `1..=users` other than `not` (unless it is the only one).
    #[inline]
    fn other_user(&mut self, not: u32) -> u32 {
        if self.users == 1 {
            return not;
        }
        let user = 1 + self.rng.below(u64::from(self.users) - 1) as u32;
        if user >= not {
            user + 1
        } else {
            user
        }
    }

    /// Draws event `seq` (at `index` in its batch), applies it to the
    /// graph and appends the notifications it causes to `notes`. One
    /// `match` on the kind does all three: the kind is random, so each
    /// branch on it is a likely misprediction.
    #[inline]
    fn draw(&mut self, seq: Seq, index: u32, notes: &mut Vec<Note>) -> Event {
        let event = |kind, from, to| Event {
            seq,
            kind,
            from,
            to,
        };
        let note = |client| {
            notes.push(Note {
                client,
                event: index,
            })
        };
        if seq == self.last_seq {
            (0..self.clients).for_each(note);
            return event(Kind::Broadcast, 0, 0);
        }
        let roll = self.rng.below(PPM);
        let kind = Kind::ALL[self.thresholds.iter().take_while(|&&t| roll >= t).count()];
        match kind {
            Kind::Follow => {
                let from = self.user();
                let to = self.other_user(from);
                self.graph.follow(from, to);
                self.graph.for_each_client(to, note);
                event(kind, from, to)
            }
            // Nobody hears of an unfollow.
            Kind::Unfollow => match self.graph.unfollow_any(&mut self.rng) {
                Some((from, to)) => event(kind, from, to),
                // Nothing to remove: a harmless unfollow of a pair that does
                // not follow, as a real client might send.
                None => {
                    let from = self.user();
                    let to = self.other_user(from);
                    event(kind, from, to)
                }
            },
            Kind::Private => {
                let from = self.user();
                let to = self.other_user(from);
                self.graph.for_each_client(to, note);
                event(kind, from, to)
            }
            Kind::Status => {
                let from = self.user();
                self.graph.for_each_follower_client(from, note);
                event(kind, from, 0)
            }
            Kind::Broadcast => {
                (0..self.clients).for_each(note);
                event(kind, 0, 0)
            }
        }
    }

    /// Events generated so far, by kind.
    pub(crate) fn mix(&self) -> MixCounts {
        self.mix
    }

    /// Follow edges in the model now.
    pub(crate) fn edges(&self) -> usize {
        self.graph.edges()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line::push_line;

    fn settings(profile: Profile, seed: u64) -> GeneratorSettings {
        GeneratorSettings {
            seed,
            users: 100,
            client_users: client_users(seed, 100, 10),
            max_batch: 100,
            profile,
        }
    }

    /// The bytes a source would send, and the notifications, for a run.
    fn stream(settings: &GeneratorSettings, first: Seq, last: Seq) -> (Vec<u8>, Vec<(u32, Seq)>) {
        let mut generator = Generator::new(settings, first, last);
        let mut batch = Batch::default();
        let (mut bytes, mut notes) = (Vec::new(), Vec::new());
        while generator.next_batch(&mut batch) {
            for &i in &batch.order {
                push_line(&batch.events[i as usize], &mut bytes);
            }
            for note in &batch.notes {
                notes.push((note.client, batch.events[note.event as usize].seq));
            }
        }
        (bytes, notes)
    }

    #[test]
    fn same_seed_same_stream() {
        let a = stream(&settings(Profile::Classic, 666), 1, 20_000);
        let b = stream(&settings(Profile::Classic, 666), 1, 20_000);
        assert_eq!(a, b);
        let c = stream(&settings(Profile::Classic, 667), 1, 20_000);
        assert_ne!(a.0, c.0);
    }

    #[test]
    fn batches_are_shuffled_contiguous_ranges_ending_in_a_broadcast() {
        let mut generator = Generator::new(&settings(Profile::Classic, 1), 5, 10_004);
        let mut batch = Batch::default();
        let mut next = 5;
        let mut shuffled = 0;
        while generator.next_batch(&mut batch) {
            assert!((1..=100).contains(&batch.events.len()));
            for (i, event) in batch.events.iter().enumerate() {
                assert_eq!(event.seq, next + i as u64);
            }
            let mut order = batch.order.clone();
            if order.windows(2).any(|w| w[0] > w[1]) {
                shuffled += 1;
            }
            order.sort_unstable();
            assert!(order.iter().enumerate().all(|(i, &o)| o == i as u32));
            next += batch.events.len() as u64;
        }
        assert_eq!(next, 10_005);
        assert!(shuffled > 0);
        let mix = generator.mix();
        assert_eq!(mix.iter().sum::<u64>(), 10_000);
        assert!(mix[Kind::Broadcast as usize] >= 1, "the last event");
    }

    #[test]
    fn a_later_start_renumbers_the_same_events() {
        let config = settings(Profile::Fanout, 9);
        let mut a = Generator::new(&config, 1, 1000);
        let mut b = Generator::new(&config, 11, 1010);
        let (mut x, mut y) = (Batch::default(), Batch::default());
        while a.next_batch(&mut x) {
            assert!(b.next_batch(&mut y));
            assert_eq!(x.order, y.order);
            assert_eq!(x.notes, y.notes);
            for (p, q) in x.events.iter().zip(&y.events) {
                assert_eq!(
                    (p.kind, p.from, p.to, p.seq + 10),
                    (q.kind, q.from, q.to, q.seq)
                );
            }
        }
    }

    #[test]
    fn the_classic_mix_has_the_classic_proportions() {
        let mut generator = Generator::new(&settings(Profile::Classic, 666), 1, 1_000_000);
        let mut batch = Batch::default();
        while generator.next_batch(&mut batch) {}
        let mix = generator.mix();
        let share = |kind: Kind| mix[kind as usize] as f64 / 1e6;
        assert!((share(Kind::Status) - 0.55).abs() < 0.005, "{mix:?}");
        for kind in [Kind::Follow, Kind::Unfollow, Kind::Private] {
            assert!((share(kind) - 0.15).abs() < 0.005, "{mix:?}");
        }
        assert!(
            (50..200).contains(&mix[Kind::Broadcast as usize]),
            "{mix:?}"
        );
    }

    #[test]
    fn notifications_follow_the_rules() {
        // A reference model: a plain set of edges and the client list.
        let config = settings(Profile::Fanout, 3);
        let mut generator = Generator::new(&config, 1, 5_000);
        let mut edges = std::collections::HashSet::new();
        let mut batch = Batch::default();
        while generator.next_batch(&mut batch) {
            let mut notes = batch.notes.iter().peekable();
            for (index, event) in batch.events.iter().enumerate() {
                let mut got = Vec::new();
                while let Some(note) = notes.next_if(|n| n.event == index as u32) {
                    got.push(note.client);
                }
                got.sort_unstable();
                let clients_of = |user: u32| {
                    config
                        .client_users
                        .iter()
                        .enumerate()
                        .filter(move |&(_, &u)| u == user)
                        .map(|(c, _)| c as u32)
                };
                let mut want: Vec<u32> = match event.kind {
                    Kind::Follow | Kind::Private => clients_of(event.to).collect(),
                    Kind::Unfollow => Vec::new(),
                    Kind::Broadcast => (0..10).collect(),
                    Kind::Status => edges
                        .iter()
                        .filter(|&&(_, to)| to == event.from)
                        .flat_map(|&(from, _)| clients_of(from))
                        .collect(),
                };
                want.sort_unstable();
                assert_eq!(got, want, "event {event:?}");
                match event.kind {
                    Kind::Follow => {
                        edges.insert((event.from, event.to));
                    }
                    Kind::Unfollow => {
                        edges.remove(&(event.from, event.to));
                    }
                    _ => {}
                }
            }
        }
        assert!(!edges.is_empty());
    }

    #[test]
    fn client_users_are_distinct_until_they_run_out() {
        let users = client_users(666, 1000, 100);
        let distinct: std::collections::HashSet<_> = users.iter().collect();
        assert_eq!(distinct.len(), 100);
        assert!(users.iter().all(|&u| (1..=1000).contains(&u)));
        let crowded = client_users(666, 3, 7);
        assert_eq!(crowded.len(), 7);
        for user in 1..=3 {
            assert!(crowded.iter().filter(|&&u| u == user).count() >= 2);
        }
        assert_eq!(client_users(666, 1000, 100), users);
    }
}
