//! What the database did to a transaction behind its scopes' backs: PostgreSQL aborts it at a
//! failed statement, MySQL rolls it back on a deadlock (and commits it implicitly before DDL),
//! SQLite rolls it back on some errors. The end of a transaction (or of a savepoint) finds it
//! gone or aborted; this module says what that means, from what the scopes saw: the database
//! errors their bodies returned, and SQLite's own account (its rollback hook, see
//! `driver::Watch`). docs/SEMANTICS.md, "When the database ends a transaction".

use super::state::State;
use super::{SavepointFailure, Transaction};
use crate::dialect::{Dialect, Found};
use crate::error::Error;
use crate::inspect::DatabaseFailure;

/// What the database did to the transaction by itself, as far as it is known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum Underneath {
    /// Nothing: the transaction is as its scopes left it.
    #[default]
    Intact,
    /// It rolled the transaction back, or aborted it (PostgreSQL): nothing of it can commit.
    RolledBack,
    /// It ended the transaction, and whether by a rollback or a commit cannot be known.
    Ended,
}

impl Transaction {
    /// A database error a scope of `level` returned: kept while the level's work stands, to
    /// explain (and quote) a transaction the database ended.
    pub(crate) fn note_failure(&self, level: u64, failure: DatabaseFailure) {
        self.lock().failures.push((level, failure));
    }

    /// What the database did underneath, as known now: from SQLite's watch, and from what
    /// the transaction's ends found, read with the failures the scopes have returned so far (a
    /// failure returned after another user of the connection found the transaction gone still
    /// explains it).
    pub(super) fn underneath(&self, st: &State) -> Underneath {
        if st.watch.as_ref().is_some_and(|w| w.rolled_back()) {
            return Underneath::RolledBack;
        }
        match st.found {
            None | Some(Found::Failed) => Underneath::Intact,
            Some(Found::Aborted) => Underneath::RolledBack,
            Some(Found::Gone) => match self.dialect() {
                // Only the watch can tell: a commit it did not allow is refused, so a
                // transaction it saw end was rolled back.
                Dialect::Sqlite if st.watch.is_some() => Underneath::RolledBack,
                Dialect::Sqlite => Underneath::Ended,
                // A rollback the database does itself is announced by the statement that
                // failed; without one seen, an implicit commit is as likely.
                Dialect::MySql if st.failures.iter().any(|(_, f)| f.rolled_back) => {
                    Underneath::RolledBack
                }
                Dialect::MySql => Underneath::Ended,
                // PostgreSQL ends a transaction only when told to (COMMIT or ROLLBACK sent
                // through a guard).
                Dialect::Postgres => Underneath::Ended,
            },
        }
    }

    /// The end of the transaction (or of a savepoint) found it aborted or gone: remembered
    /// for the levels that end after; what it means, as known now.
    pub(super) fn found(&self, found: Found) -> Underneath {
        let mut st = self.lock();
        if found != Found::Failed && st.found.is_none() {
            st.found = Some(found);
        }
        self.underneath(&st)
    }

    /// The error of the statement that failed first at the savepoint at `at` or inside it,
    /// where a scope returned it.
    pub(super) fn failure_within(&self, at: usize) -> Option<String> {
        let st = self.lock();
        let levels: Vec<u64> = st.savepoints[at..].iter().map(|o| o.level).collect();
        st.failures
            .iter()
            .find(|(level, _)| levels.contains(level))
            .map(|(_, failure)| failure.text.clone())
    }

    /// The error a scope gets for a transaction the database ended (`source`: the database's
    /// answer to the statement that found it so).
    pub(super) fn underneath_error(
        &self,
        underneath: Underneath,
        source: Option<sqlx::Error>,
    ) -> Error {
        let data_source = self.data_source.name.to_string();
        match underneath {
            Underneath::Ended => Error::EndedUnderneath {
                data_source,
                reason: self.dialect().ended_underneath_reason(),
                source,
            },
            Underneath::Intact | Underneath::RolledBack => Error::Aborted {
                data_source,
                cause: self.lock().failures.first().map(|(_, f)| f.text.clone()),
                source,
            },
        }
    }
}

impl Transaction {
    /// How a statement on savepoint `name` failed: the savepoint is gone with the whole
    /// transaction (the database ended it), or something else went wrong.
    pub(super) fn savepoint_failure(&self, source: sqlx::Error, name: &str) -> SavepointFailure {
        let gone = source
            .as_database_error()
            .is_some_and(|error| self.dialect().savepoint_gone(error, name));
        if gone {
            let underneath = self.found(Found::Gone);
            SavepointFailure::Gone(self.underneath_error(underneath, Some(source)))
        } else {
            SavepointFailure::Broken(self.statement_error(source))
        }
    }
}

/// Forgets the failures of levels whose work was rolled back to (they explain nothing that
/// stays).
pub(super) fn forget_failures(st: &mut State, from: usize) {
    let undone: Vec<u64> = st.savepoints[from..].iter().map(|o| o.level).collect();
    st.failures.retain(|(level, _)| !undone.contains(level));
}
