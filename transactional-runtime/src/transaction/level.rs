//! Levels of a transaction (the transaction itself, and a savepoint per NESTED scope inside
//! it), and frames: one scope's view of the level it runs at, as the task-local context
//! carries it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

use super::Transaction;
use crate::hooks::HookList;
use crate::options::TxOptions;

static NEXT_LEVEL: AtomicU64 = AtomicU64::new(1);

/// One level of a transaction: the transaction itself (the root), or a NESTED scope's
/// savepoint inside it. Rollback-only marks and hooks belong to a level, so rolling back to a
/// savepoint forgets both.
pub(crate) struct Level {
    pub(crate) id: u64,
    pub(crate) tx: Arc<Transaction>,
    pub(crate) parent: Option<Arc<Level>>,
    /// A NESTED level's savepoint name (sent only once the level first uses the connection).
    pub(crate) savepoint: Option<String>,
    rollback_only: AtomicBool,
    /// Its scope has ended: guards of this level fail, and no statement runs at it any more.
    ended: AtomicBool,
    pub(crate) hooks: HookList,
}

impl Level {
    pub(crate) fn root(tx: Arc<Transaction>) -> Level {
        Level::new(tx, None, None)
    }

    pub(crate) fn savepoint(parent: Arc<Level>) -> Level {
        let name = parent.tx.next_savepoint_name();
        Level::new(parent.tx.clone(), Some(parent), Some(name))
    }

    fn new(tx: Arc<Transaction>, parent: Option<Arc<Level>>, savepoint: Option<String>) -> Level {
        Level {
            id: NEXT_LEVEL.fetch_add(1, Ordering::Relaxed),
            tx,
            parent,
            savepoint,
            rollback_only: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            hooks: HookList::default(),
        }
    }

    /// Marked rollback-only, here or at an enclosing level.
    pub(crate) fn is_rollback_only(&self) -> bool {
        self.rollback_only.load(Ordering::Acquire)
            || self.parent.as_ref().is_some_and(|p| p.is_rollback_only())
    }

    pub(crate) fn mark_rollback_only(&self) {
        self.rollback_only.store(true, Ordering::Release);
    }

    /// This level or an enclosing one has ended.
    pub(crate) fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire) || self.parent.as_ref().is_some_and(|p| p.is_ended())
    }

    pub(crate) fn end(&self) {
        self.ended.store(true, Ordering::Release);
    }

    /// The savepoint levels from the outermost down to this one (the root has none).
    pub(crate) fn savepoint_chain(self: &Arc<Level>) -> Vec<Arc<Level>> {
        let mut chain = Vec::new();
        let mut at = Some(self);
        while let Some(level) = at {
            if level.parent.is_some() {
                chain.push(level.clone());
            }
            at = level.parent.as_ref();
        }
        chain.reverse();
        chain
    }
}

/// What a scope did with the transaction it runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Began the physical transaction.
    Owner,
    /// Created a savepoint (NESTED).
    Savepoint,
    /// Joined an existing transaction.
    Participant,
}

/// One scope's view of the current transaction, as carried in the task-local context.
pub(crate) struct Frame {
    pub(crate) level: Arc<Level>,
    pub(crate) role: Role,
    /// The options of the scope this frame belongs to.
    pub(crate) options: TxOptions,
    /// The frame current on the same data source when this scope started, if it ran in the
    /// same transaction.
    pub(crate) parent: Option<Arc<Frame>>,
    /// The scope's deadline, if it has one.
    pub(crate) deadline: Option<Instant>,
    /// A savepoint of `testing::rollback_after` standing in for a transaction the scope would
    /// begin in production: its release is where production would commit.
    pub(crate) stands_for_commit: bool,
    local_rollback_only: AtomicBool,
}

impl Frame {
    pub(crate) fn new(
        level: Arc<Level>,
        role: Role,
        options: TxOptions,
        parent: Option<Arc<Frame>>,
        deadline: Option<Instant>,
    ) -> Frame {
        Frame {
            level,
            role,
            options,
            parent,
            deadline,
            stands_for_commit: false,
            local_rollback_only: AtomicBool::new(false),
        }
    }

    pub(crate) fn tx(&self) -> &Arc<Transaction> {
        &self.level.tx
    }

    /// Whether this frame is `scope` or a frame of a scope that ran inside it.
    pub(crate) fn is_within(&self, scope: &Frame) -> bool {
        let mut at = Some(self);
        while let Some(frame) = at {
            if std::ptr::eq(frame, scope) {
                return true;
            }
            at = frame.parent.as_deref();
        }
        false
    }

    /// `set_rollback_only()` from this scope's body: the owner of a transaction or savepoint
    /// asks for its own rollback; a participant marks the level it joined.
    pub(crate) fn set_rollback_only(&self) {
        match self.role {
            Role::Participant => self.level.mark_rollback_only(),
            Role::Owner | Role::Savepoint => {
                self.local_rollback_only.store(true, Ordering::Release)
            }
        }
    }

    pub(crate) fn rollback_requested(&self) -> bool {
        self.local_rollback_only.load(Ordering::Acquire)
    }

    pub(crate) fn is_rollback_only(&self) -> bool {
        self.rollback_requested() || self.level.is_rollback_only()
    }
}
