//! The hot path: empty the socket as fast as datagrams arrive, and nothing
//! else. Raw datagrams are copied into chunks that the aggregator thread
//! parses and counts; the receiver does no parsing, touches no disk and takes
//! no lock, so it needs so little CPU that even on a busy host it is back in
//! `recv` before the kernel's short queue (`net.unix.max_dgram_qlen`) fills.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver as ChannelReceiver, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mailtls_common::clock::{day_string, next_midnight, Clock};

use crate::socket::{CollectorSocket, RecvBatch};

/// Signals the receiver reacts to, set by signal handlers. A signal also
/// interrupts the receiver's read, so it is seen at once.
#[derive(Default)]
pub struct SignalFlags {
    pub terminate: Arc<AtomicBool>,
    pub rollover: Arc<AtomicBool>,
    pub reopen_log: Arc<AtomicBool>,
}

/// Raw datagrams in the order received.
#[derive(Debug, Default)]
pub struct Chunk {
    data: Vec<u8>,
    /// (end offset in `data`, length as sent): a datagram longer than
    /// [`MAX_DATAGRAM`] is stored truncated and reported as such.
    items: Vec<(usize, usize)>,
}

impl Chunk {
    /// Hand a chunk over at this many datagrams...
    const MAX_ITEMS: usize = 256;
    /// ...or when the next datagram would not fit into this many bytes (a
    /// chunk grows only for a single datagram larger than that).
    const MAX_BYTES: usize = 128 * 1024;

    /// Empty the chunk, keeping its memory for the next use.
    pub fn clear(&mut self) {
        self.data.clear();
        self.items.clear();
    }

    fn with_capacity() -> Chunk {
        Chunk {
            data: Vec::with_capacity(Chunk::MAX_BYTES),
            items: Vec::with_capacity(Chunk::MAX_ITEMS),
        }
    }

    fn has_room_for(&self, len: usize) -> bool {
        self.items.len() < Chunk::MAX_ITEMS && self.data.len() + len <= Chunk::MAX_BYTES
    }

    fn push(&mut self, bytes: &[u8], sent_len: usize) {
        self.data.extend_from_slice(bytes);
        self.items.push((self.data.len(), sent_len));
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Each datagram's stored bytes and the length it had when sent.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], usize)> {
        let mut start = 0;
        self.items.iter().map(move |&(end, sent)| {
            let bytes = &self.data[start..end];
            start = end;
            (bytes, sent)
        })
    }
}

/// What the receiver passes on, in order.
#[derive(Debug)]
pub enum Input {
    Datagrams(Chunk),
    /// UTC midnight has passed: what follows belongs to `day`.
    NewDay(String),
    /// SIGUSR2: development rollover of the counters of `today`.
    DevelopmentRollover {
        today: String,
    },
    /// SIGTERM/SIGINT: everything has been passed on.
    Finish,
}

/// While a chunk waits to be handed over, read with this timeout so that a
/// quiet socket hands it over soon; otherwise with the socket's default.
const PENDING_READ_TIMEOUT: Duration = Duration::from_millis(2);

pub struct Receiver<'a> {
    socket: CollectorSocket,
    flags: SignalFlags,
    clock: &'a dyn Clock,
    out: SyncSender<Input>,
    /// Chunks the aggregator has emptied, to be filled again: no allocation
    /// and no page faults on the hot path once they exist.
    recycled: ChannelReceiver<Chunk>,
    chunk: Chunk,
    day: String,
    midnight: DateTime<Utc>,
    batch: RecvBatch,
    short_timeout: bool,
    /// Datagrams received since start.
    pub received: u64,
}

impl<'a> Receiver<'a> {
    pub fn new(
        socket: CollectorSocket,
        flags: SignalFlags,
        clock: &'a dyn Clock,
        out: SyncSender<Input>,
        recycled: ChannelReceiver<Chunk>,
    ) -> Receiver<'a> {
        let now = clock.now();
        Receiver {
            socket,
            flags,
            clock,
            out,
            recycled,
            chunk: Chunk::with_capacity(),
            day: day_string(now.date_naive()),
            midnight: next_midnight(now),
            batch: RecvBatch::new(),
            short_timeout: false,
            received: 0,
        }
    }

    /// The day the receiver starts in.
    pub fn day(&self) -> &str {
        &self.day
    }

    /// Receive until SIGTERM/SIGINT; then remove the socket, read what the
    /// kernel had already accepted, and pass everything on.
    pub fn run(mut self) -> u64 {
        while !self.flags.terminate.load(Ordering::Relaxed) {
            match self.socket.recv_batch(&mut self.batch, true) {
                Ok(0) => {
                    self.check_midnight();
                    self.hand_over();
                }
                Ok(n) => self.take_batch(n),
                Err(e) => {
                    log::error!("reading from socket {}: {e}", self.socket.path().display());
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            self.adjust_timeout();
            if self.flags.reopen_log.swap(false, Ordering::Relaxed) {
                mailtls_common::logging::reopen();
            }
            if self.flags.rollover.swap(false, Ordering::Relaxed) {
                self.hand_over();
                let today = self.day.clone();
                self.send(Input::DevelopmentRollover { today });
            }
        }
        log::info!("terminating: removing the socket and reading what is still queued");
        self.socket.unlink();
        while let Ok(n @ 1..) = self.socket.recv_batch(&mut self.batch, false) {
            self.take_batch(n);
        }
        self.check_midnight();
        self.hand_over();
        self.send(Input::Finish);
        self.received
    }

    /// The `n` datagrams of one batch: all read at the same instant, so
    /// one look at the clock serves them all.
    fn take_batch(&mut self, n: usize) {
        self.check_midnight();
        self.received += n as u64;
        for i in 0..n {
            let (data, len) = self.batch.get(i);
            if !self.chunk.has_room_for(data.len()) {
                pass_on(&mut self.chunk, &self.recycled, &self.out);
            }
            self.chunk.push(data, len);
        }
    }

    /// At the first moment after UTC midnight, before taking anything new.
    fn check_midnight(&mut self) {
        let now = self.clock.now();
        if now < self.midnight {
            return;
        }
        self.hand_over();
        self.day = day_string(now.date_naive());
        self.midnight = next_midnight(now);
        self.send(Input::NewDay(self.day.clone()));
    }

    fn hand_over(&mut self) {
        pass_on(&mut self.chunk, &self.recycled, &self.out);
    }

    /// Short read timeout while a chunk is pending, the long default when
    /// not: one system call on each change, none per datagram.
    fn adjust_timeout(&mut self) {
        let want_short = !self.chunk.is_empty();
        if want_short != self.short_timeout {
            let timeout = if want_short {
                PENDING_READ_TIMEOUT
            } else {
                crate::socket::READ_TIMEOUT
            };
            if let Err(e) = self.socket.set_read_timeout(timeout) {
                log::warn!("cannot change the socket read timeout: {e}");
            }
            self.short_timeout = want_short;
        }
    }

    fn send(&self, input: Input) {
        if self.out.send(input).is_err() {
            log::error!("the aggregator has stopped; datagrams cannot be counted");
        }
    }
}

/// Sends a non-empty chunk to the aggregator and takes a recycled (or new)
/// one in its place.
fn pass_on(chunk: &mut Chunk, recycled: &ChannelReceiver<Chunk>, out: &SyncSender<Input>) {
    if chunk.is_empty() {
        return;
    }
    let next = recycled
        .try_recv()
        .unwrap_or_else(|_| Chunk::with_capacity());
    let full = std::mem::replace(chunk, next);
    if out.send(Input::Datagrams(full)).is_err() {
        log::error!("the aggregator has stopped; datagrams cannot be counted");
    }
}
