//! The states of a transaction's connection, each a named enum: who has the connection
//! ([`Slot`]), where the transaction stands on it ([`Life`]), what the connection owes before
//! its next statement after one was cut off ([`Owed`]), SQLite's interrupt ([`Interrupt`]) and
//! the statement cancels sent for it ([`Cancels`]). docs/ARCHITECTURE.md ("The transaction's
//! connection") draws the transitions.

use std::sync::{Arc, Weak};

use super::level::{Frame, Level};
use crate::dialect::Found;
use crate::driver::{Conn, Watch};
use crate::inspect::DatabaseFailure;

/// Everything about a transaction that changes, behind its mutex.
#[derive(Default)]
pub(super) struct State {
    pub(super) slot: Slot,
    pub(super) life: Life,
    /// Open savepoints, outermost first.
    pub(super) savepoints: Vec<Open>,
    /// The server session, to cancel a statement from another connection.
    pub(super) session: Option<i64>,
    pub(super) owed: Owed,
    pub(super) interrupt: Interrupt,
    pub(super) cancels: Cancels,
    /// SQLite's account of the transaction (see `driver::Watch`).
    pub(super) watch: Option<Arc<Watch>>,
    /// A statement that gives the session its setting back, until it has been sent.
    pub(super) reset: Option<&'static str>,
    /// Database errors the scopes' bodies returned, by level, while that level's work stands.
    pub(super) failures: Vec<(u64, DatabaseFailure)>,
    /// What the end of the transaction (or of a savepoint) found the database had done to it.
    pub(super) found: Option<Found>,
}

/// Who has the connection.
#[derive(Default)]
pub(super) enum Slot {
    /// No connection: not begun yet, or released.
    #[default]
    Empty,
    /// Not begun yet: its first connection is being taken from the pool. Nothing has been
    /// sent, so the transaction can end without waiting for it; a connection that arrives
    /// after the end goes straight back to the pool.
    Acquiring,
    /// In the slot, for the next user.
    Idle(Conn),
    /// Lent to a guard of this frame.
    Lent(Arc<Frame>),
    /// A control statement runs on it.
    Busy,
}

/// Where the transaction stands on its connection.
///
/// ```text
/// NotBegun ──BEGIN answered──► Begun ──COMMIT sent──► Committing ──answered──► Closing { open: false }
///                                │  └────────────ROLLBACK answered──────────────────────▲
///                                │ the owner's end gave up the connection (a guard held it)
///                                ▼
///                          Closing { open: true }          any ──connection given up──► Broken
/// ```
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Life {
    /// Nothing was sent (or BEGIN failed): the next lend sends BEGIN.
    #[default]
    NotBegun,
    /// BEGIN was answered; no end has been sent.
    Begun,
    /// COMMIT was sent and is not answered yet: a deadline passing now leaves its outcome
    /// unknown to the caller.
    Committing,
    /// The owner has ended: a connection given back is cleaned up (rolled back first if the
    /// transaction is still `open` on it) and released, never lent again.
    Closing { open: bool },
    /// The connection was lost or closed half-way: the server rolled back whatever was open,
    /// and nothing more runs in it.
    Broken,
}

impl Life {
    /// Whether the connection has the transaction open: a cleanup rolls it back.
    pub(super) fn is_open(self) -> bool {
        matches!(
            self,
            Life::Begun | Life::Committing | Life::Closing { open: true }
        )
    }

    /// The owner's end lets the connection go: whoever gives it back disposes of it.
    pub(super) fn close(&mut self) {
        if *self != Life::Broken {
            *self = Life::Closing {
                open: self.is_open(),
            };
        }
    }
}

/// What the connection owes before it serves anyone, after a statement was cut off.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Owed {
    #[default]
    Nothing,
    /// The answer of a statement cut off (PostgreSQL, MySQL): taken by a statement that
    /// answers at once, so that it reaches no other one.
    Answer,
    /// SQLite's progress handler stopped a statement: wait for it to end, clear the interrupt,
    /// and check that SQLite did not roll the whole transaction back.
    Interrupted,
}

/// SQLite's progress handler, armed to stop a statement at a deadline.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Interrupt {
    #[default]
    Unarmed,
    /// Installed on the connection: disarmed before it goes back to the pool.
    Armed,
}

/// The statement cancels sent to the server (PostgreSQL, MySQL) from another connection.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Cancels {
    #[default]
    NeverSent,
    /// `in_flight` of them are on their way: the connection is not used, nor returned to the
    /// pool, until they have landed (a late one would hit the next statement). A statement that
    /// ignores them gets its session ended (see `STUCK_AFTER_CANCEL`).
    Sent { in_flight: usize },
}

impl Cancels {
    pub(super) fn in_flight(self) -> usize {
        match self {
            Cancels::NeverSent => 0,
            Cancels::Sent { in_flight } => in_flight,
        }
    }

    pub(super) fn sent(self) -> bool {
        matches!(self, Cancels::Sent { .. })
    }

    pub(super) fn start(&mut self) {
        *self = Cancels::Sent {
            in_flight: self.in_flight() + 1,
        };
    }

    pub(super) fn landed(&mut self) {
        if let Cancels::Sent { in_flight } = self {
            *in_flight -= 1;
        }
    }
}

/// An open savepoint.
pub(super) struct Open {
    pub(super) level: u64,
    /// Weak: a level whose scope has gone leaves its savepoint abandoned.
    pub(super) scope: Weak<Level>,
    pub(super) name: String,
    /// Its scope was dropped: roll back to it before the next statement.
    pub(super) abandoned: bool,
}

impl Open {
    /// Its scope was dropped, or ended without closing it (the scope of a savepoint opened on
    /// its behalf after it was dropped): roll back to it before the next statement.
    pub(super) fn is_abandoned(&self) -> bool {
        self.abandoned || self.scope.upgrade().is_none_or(|level| level.is_ended())
    }
}

/// The lowest abandoned savepoint among `open`: where it is, and its name.
pub(super) fn first_abandoned(open: &[Open]) -> Option<(usize, String)> {
    open.iter()
        .position(|o| o.is_abandoned())
        .map(|at| (at, open[at].name.clone()))
}
