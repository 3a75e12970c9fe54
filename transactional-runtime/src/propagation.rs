//! The propagation decision: a pure function of the mode and whether a transaction exists.

use crate::options::Propagation;

/// What a scope does at its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Take part in the current transaction.
    Join,
    /// Begin a new physical transaction (suspending the current one, if any).
    Begin,
    /// Create a savepoint in the current transaction.
    Nest,
    /// Run without a transaction (suspending the current one, if any).
    RunWithout,
    /// Refuse: MANDATORY without a transaction, NEVER with one. The body does not run.
    Refuse,
}

/// The table of docs/SEMANTICS.md ("Propagation") as a function: `(mode, a transaction exists)` → what the scope does.
pub(crate) const fn decide(propagation: Propagation, exists: bool) -> Decision {
    use Decision::*;
    use Propagation::*;
    match (propagation, exists) {
        (Required | Supports | Mandatory, true) => Join,
        (Required | RequiresNew | Nested, false) => Begin,
        (RequiresNew, true) => Begin,
        (Nested, true) => Nest,
        (Supports | NotSupported | Never, false) => RunWithout,
        (NotSupported, true) => RunWithout,
        (Mandatory, false) | (Never, true) => Refuse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::*;
    use Propagation::*;

    /// Every cell of the table, spelled out.
    #[test]
    fn every_cell_of_the_propagation_table() {
        let table = [
            (Required, Join, Begin),
            (Supports, Join, RunWithout),
            (Mandatory, Join, Refuse),
            (RequiresNew, Begin, Begin),
            (NotSupported, RunWithout, RunWithout),
            (Never, Refuse, RunWithout),
            (Nested, Nest, Begin),
        ];
        assert_eq!(table.len(), Propagation::ALL.len());
        for (mode, with_tx, without_tx) in table {
            assert_eq!(decide(mode, true), with_tx, "{mode} with a transaction");
            assert_eq!(
                decide(mode, false),
                without_tx,
                "{mode} without a transaction"
            );
        }
    }
}
