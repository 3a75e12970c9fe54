//! The soak's model: random trees of scopes, what each scope must return (docs/SEMANTICS.md,
//! Propagation and Outcome), and which rows the outcomes the calls reported imply.
//!
//! A call is a tree of scopes. Each scope's body registers hooks (if it begins a transaction;
//! maybe a before-commit hook that writes a row of its own), writes one row (maybe), calls its children (in order, or all at once with `join_all`: they
//! share the transaction), maybe calls `set_rollback_only()`, and ends: `Ok`, an `Err`, a panic, or a
//! slow statement cut by its deadline, or a statement after which the database ends the whole
//! transaction. A child's `Err` is either returned by its parent (`?`)
//! or swallowed. The call itself may be dropped after a random number of polls.
//!
//! Two checks come out of it:
//! - [`predict`]: for a call that ran to its end, the result of every scope whose result does
//!   not depend on timing, from the rules alone.
//! - [`expected_rows`] and [`Fate`]: for every call, whatever happened to it, the rows implied
//!   by what each scope reported (an `Ok` owner committed, a NESTED `Err` undid its work, a
//!   body cut before its end rolled back, a commit in flight is all or nothing).

use std::collections::HashMap;

/// A deterministic generator (splitmix64): one seed replays a run's calls.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Required,
    RequiresNew,
    Nested,
    Supports,
    Mandatory,
    NotSupported,
    Never,
}

/// What a scope does with the transaction around it; known from its ancestors alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Begins,
    Joins,
    Nests,
    Without,
    /// MANDATORY without a transaction, NEVER inside one: the body does not run.
    Refused,
}

/// How a body ends once its row and its children are done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Ok,
    Err,
    Panic,
    /// A slow statement that the scope's deadline cuts: on a scope that begins (its
    /// transaction rolls back) or a NESTED one (its savepoint does, the outer goes on). Not on
    /// a joined scope: on PostgreSQL its cancelled statement aborts the whole transaction, so
    /// what its siblings then get is not the model's to say (tests/conformance/deadlines.rs).
    Timeout,
    /// The database ends the transaction by itself (MySQL: the victim of a deadlock with
    /// another session; SQLite: `INSERT OR ROLLBACK`; PostgreSQL: a duplicate key aborts it),
    /// and the body returns its error. Whatever runs in the transaction after it (siblings,
    /// the parent that caught the error) is never kept, and its owner never reports a commit.
    Underneath,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub mode: Mode,
    pub role: Role,
    pub serializable: bool,
    pub write: bool,
    pub children: Vec<usize>,
    /// The children run concurrently (`join_all`) instead of one after the other.
    pub concurrent: bool,
    /// The parent returns this scope's `Err` as its own instead of carrying on.
    pub propagate: bool,
    /// Calls `set_rollback_only()` once its children are done.
    pub mark: bool,
    /// Registers after-* hooks (always, on a scope that begins; sometimes on a joined or
    /// NESTED one: theirs go with the level they were registered at).
    pub hooks: bool,
    /// Registers a before-commit hook that writes row `id + 32` (only a scope that begins).
    pub before_commit: bool,
    pub end: End,
}

/// One call: a tree of scopes, `nodes[0]` its root.
#[derive(Clone, Debug)]
pub struct Call {
    pub index: usize,
    pub nodes: Vec<Node>,
    /// Dropped after this many polls, if it has not completed by then.
    pub drop_after: Option<usize>,
}

/// What a scope's call ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Err(Kind),
    Panicked,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Boom,
    UnexpectedRollback,
    NoExistingTransaction,
    ExistingTransaction,
    RollbackOnlySavepoint,
    Timeout,
    CommitUnknown,
    Other,
}

/// What the body and its caller recorded, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Entered(usize),
    Hooks(usize),
    Wrote(usize),
    Marked(usize),
    /// The database ended the transaction of this scope by itself (see [`End::Underneath`]).
    EndedUnderneath(usize),
    /// MySQL: this scope's statement waits in the deadlock that may end its transaction. If
    /// the scope is cut before it returns the deadlock's error, nothing tells the library
    /// that a rollback (not an implicit commit) ended it: its outcome is unknown.
    Provoked(usize),
    BodyDone(usize, bool),
    Returned(usize, Outcome, String),
}

struct Ctx {
    in_tx: bool,
    suspended: bool,
    depth: usize,
}

const MAX_NODES: usize = 12;

impl Call {
    /// A random call. `single_writer` (SQLite): no scope writes while a transaction it
    /// suspended is open, since that transaction may hold the database's write lock.
    pub fn generate(rng: &mut Rng, index: usize, single_writer: bool) -> Call {
        let mut nodes = Vec::new();
        let root = Ctx {
            in_tx: false,
            suspended: false,
            depth: 0,
        };
        generate_node(rng, &mut nodes, root, single_writer);
        let drop_after = rng.chance(30).then(|| 1 + rng.below(10) as usize);
        Call {
            index,
            nodes,
            drop_after,
        }
    }

    /// The row scope `node` writes.
    pub fn id(&self, node: usize) -> i64 {
        (self.index * 64 + node) as i64
    }

    /// The row the before-commit hook of scope `node` writes.
    pub fn hook_id(&self, node: usize) -> i64 {
        self.id(node) + 32
    }

    /// The row scope `node` writes before the statement that makes the database end its
    /// transaction (not on MySQL, whose deadlock is on a table of its own).
    pub fn underneath_id(&self, node: usize) -> i64 {
        self.id(node) + 16
    }

    /// Whether a deadline inside it may cut work at an unknown point.
    pub fn has_deadline(&self) -> bool {
        self.nodes.iter().any(|n| n.end == End::Timeout)
    }

    /// Whether a scope of it makes the database end its transaction: then the errors of the
    /// scopes after it are the database's to say, and the results are not predicted.
    pub fn ends_underneath(&self) -> bool {
        self.nodes.iter().any(|n| n.end == End::Underneath)
    }
}

fn role(mode: Mode, in_tx: bool) -> Role {
    match (mode, in_tx) {
        (Mode::Required, false) | (Mode::RequiresNew, _) | (Mode::Nested, false) => Role::Begins,
        (Mode::Required | Mode::Supports | Mode::Mandatory, true) => Role::Joins,
        (Mode::Nested, true) => Role::Nests,
        (Mode::Supports | Mode::Never, false) | (Mode::NotSupported, _) => Role::Without,
        (Mode::Mandatory, false) | (Mode::Never, true) => Role::Refused,
    }
}

fn generate_node(rng: &mut Rng, nodes: &mut Vec<Node>, ctx: Ctx, single_writer: bool) -> usize {
    let mut mode = match rng.below(11) {
        0..=2 => Mode::Required,
        3 | 4 => Mode::RequiresNew,
        5 | 6 => Mode::Nested,
        7 => Mode::Supports,
        8 => Mode::Mandatory,
        9 => Mode::NotSupported,
        _ => Mode::Never,
    };
    let suspends = |m: Mode| ctx.in_tx && matches!(m, Mode::RequiresNew | Mode::NotSupported);
    // At most one suspension on any path from the root: a scope holding a connection while it
    // waits for another is then always an outer whose inner scopes, once they have theirs, wait
    // for nothing. With four calls at a time, at most four of the pool's ten connections wait,
    // so the rest always serve inner scopes (concurrent ones may queue for them briefly).
    if suspends(mode) && ctx.suspended {
        mode = Mode::Required;
    }
    let role = role(mode, ctx.in_tx);
    let suspended = ctx.suspended || suspends(mode);
    let in_tx = match role {
        Role::Begins | Role::Joins | Role::Nests => true,
        Role::Without => false,
        Role::Refused => ctx.in_tx,
    };
    let may_write = role != Role::Refused && !(single_writer && suspended);
    let write = may_write && rng.chance(70);
    let end = match rng.below(100) {
        0..=9 => End::Err,
        10..=12 => End::Panic,
        13..=16 if matches!(role, Role::Begins | Role::Nests) => End::Timeout,
        17 | 18 if in_tx && may_write => End::Underneath,
        _ => End::Ok,
    };
    let me = nodes.len();
    nodes.push(Node {
        mode,
        role,
        serializable: mode == Mode::RequiresNew && rng.chance(30),
        write,
        children: Vec::new(),
        concurrent: false,
        propagate: rng.chance(50),
        mark: role != Role::Refused && rng.chance(8),
        hooks: role == Role::Begins
            || (matches!(role, Role::Joins | Role::Nests) && rng.chance(40)),
        before_commit: role == Role::Begins && may_write && rng.chance(30),
        end,
    });
    if role != Role::Refused && ctx.depth < 4 {
        let children = match rng.below(10) {
            0..=3 => 0,
            4..=6 => 1,
            7 | 8 => 2,
            _ => 3,
        };
        for _ in 0..children {
            if nodes.len() >= MAX_NODES {
                break;
            }
            let child_ctx = Ctx {
                in_tx,
                suspended,
                depth: ctx.depth + 1,
            };
            let child = generate_node(rng, nodes, child_ctx, single_writer);
            nodes[me].children.push(child);
        }
        nodes[me].concurrent = nodes[me].children.len() >= 2 && rng.chance(30);
    }
    me
}

/// What each scope must return when the call runs to its end, for every scope whose result
/// does not depend on timing (a deadline with work before it is cut at an unknown point; the
/// rest of its parent is then not predicted).
pub fn predict(call: &Call) -> HashMap<usize, Outcome> {
    let mut out = HashMap::new();
    if call.ends_underneath() {
        return out;
    }
    let mut levels = Vec::new();
    if let Some(root) = simulate(call, 0, &mut levels, &mut out) {
        out.insert(0, root);
    }
    out
}

/// `levels`: the rollback-only marks of the current transaction's levels (its root, then one
/// per open savepoint); empty outside a transaction.
fn simulate(
    call: &Call,
    n: usize,
    levels: &mut Vec<bool>,
    out: &mut HashMap<usize, Outcome>,
) -> Option<Outcome> {
    let node = &call.nodes[n];
    match node.role {
        Role::Refused if node.mode == Mode::Mandatory => {
            return Some(Outcome::Err(Kind::NoExistingTransaction))
        }
        Role::Refused => return Some(Outcome::Err(Kind::ExistingTransaction)),
        Role::Nests if levels.iter().any(|&marked| marked) => {
            return Some(Outcome::Err(Kind::RollbackOnlySavepoint))
        }
        _ => {}
    }
    // Concurrent children: which of them meets a mark or a savepoint first is timing.
    if node.concurrent || (node.end == End::Timeout && !node.children.is_empty()) {
        return None;
    }
    let mut own = match node.role {
        Role::Begins => vec![false],
        Role::Without => Vec::new(),
        _ => std::mem::take(levels),
    };
    if node.role == Role::Nests {
        own.push(false);
    }
    let mut early = None;
    for &child in &node.children {
        let result = simulate(call, child, &mut own, out)?;
        out.insert(child, result);
        match result {
            Outcome::Panicked => early = Some(Outcome::Panicked),
            Outcome::Err(kind) if call.nodes[child].propagate => early = Some(Outcome::Err(kind)),
            _ => {}
        }
        if early.is_some() {
            break;
        }
    }
    let body = early.unwrap_or(match node.end {
        End::Ok => Outcome::Ok,
        End::Err => Outcome::Err(Kind::Boom),
        End::Panic => Outcome::Panicked,
        End::Timeout => Outcome::Err(Kind::Timeout),
        End::Underneath => {
            unreachable!("calls that end a transaction underneath are not predicted")
        }
    });
    let result = match node.role {
        // Its own set_rollback_only() rolls back and keeps the Ok; a participant's mark turns
        // the Ok into UnexpectedRollback.
        Role::Begins | Role::Nests => {
            let marked = own.pop().unwrap_or(false);
            if body == Outcome::Ok && marked && !node.mark {
                Outcome::Err(Kind::UnexpectedRollback)
            } else {
                body
            }
        }
        Role::Joins => {
            if body != Outcome::Ok || node.mark {
                if let Some(last) = own.last_mut() {
                    *last = true;
                }
            }
            body
        }
        Role::Without | Role::Refused => body,
    };
    if matches!(node.role, Role::Joins | Role::Nests) {
        *levels = own;
    }
    Some(result)
}

/// What happened to a transaction, from what its owner reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Committed,
    RolledBack,
    /// Its COMMIT was in flight when the call was cut, or its answer was lost: all or nothing.
    Unknown,
}

pub fn returned(log: &[Event], n: usize) -> Option<Outcome> {
    log.iter().find_map(|e| match e {
        Event::Returned(m, outcome, _) if *m == n => Some(*outcome),
        _ => None,
    })
}

/// The fate of the transaction scope `owner` began.
pub fn fate(call: &Call, log: &[Event], owner: usize) -> Fate {
    let unexplained = log.iter().any(|e| match *e {
        Event::Provoked(n) => {
            returned(log, n).is_none() && place(call, n).is_some_and(|(o, _)| o == owner)
        }
        _ => false,
    });
    if unexplained {
        return Fate::Unknown;
    }
    // It asked for the rollback itself, or a participant marked it: its end never commits.
    if log.contains(&Event::Marked(owner)) || marked_by_participant(call, log, owner) {
        return Fate::RolledBack;
    }
    match returned(log, owner) {
        Some(Outcome::Ok) => Fate::Committed,
        Some(Outcome::Err(Kind::CommitUnknown)) => Fate::Unknown,
        Some(_) => Fate::RolledBack,
        // Cut (or panicked) before its body ended: rolled back. Cut after: its end went on
        // by itself, and the COMMIT may have been sent.
        None if log.contains(&Event::BodyDone(owner, true)) => Fate::Unknown,
        None => Fate::RolledBack,
    }
}

/// Whether a scope that joined at `level`'s own level (not inside a NESTED scope, whose marks
/// are its own) failed or called `set_rollback_only()`.
fn marked_by_participant(call: &Call, log: &[Event], level: usize) -> bool {
    call.nodes[level].children.iter().any(|&child| {
        call.nodes[child].role == Role::Joins
            && (matches!(returned(log, child), Some(Outcome::Err(_)))
                || log.contains(&Event::Marked(child))
                || marked_by_participant(call, log, child))
    })
}

/// Where the hooks a scope registered go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookFate {
    /// They run with the fate of the transaction this owner began.
    With(usize),
    /// A savepoint between them and the transaction was rolled back to: discarded.
    Discarded,
    /// A savepoint between them was cut before it returned: discarded, or run with the fate
    /// of this owner's transaction (its RELEASE was in flight).
    Either(usize),
}

/// The transaction (its owner) and the NESTED scopes inside it, innermost last, around scope
/// `n` (itself included); `None` outside a transaction.
pub fn place(call: &Call, n: usize) -> Option<(usize, Vec<usize>)> {
    fn find(
        call: &Call,
        at: usize,
        around: Option<(usize, Vec<usize>)>,
        n: usize,
    ) -> Option<Option<(usize, Vec<usize>)>> {
        let node = &call.nodes[at];
        let here = match node.role {
            Role::Begins => Some((at, Vec::new())),
            Role::Joins | Role::Refused => around,
            Role::Nests => around.map(|(owner, mut savepoints)| {
                savepoints.push(at);
                (owner, savepoints)
            }),
            Role::Without => None,
        };
        if at == n {
            return Some(here);
        }
        node.children
            .iter()
            .find_map(|&child| find(call, child, here.clone(), n))
    }
    find(call, 0, None, n).flatten()
}

/// Where the after-* hooks scope `n` registered go (docs/SEMANTICS.md, "Hooks": a released
/// savepoint's move to the enclosing level, a rolled-back one's are discarded).
pub fn hook_fate(call: &Call, log: &[Event], n: usize) -> HookFate {
    let (owner, savepoints) = place(call, n).expect("hooks are registered inside a transaction");
    let mut cut = false;
    for &s in &savepoints {
        match returned(log, s) {
            Some(Outcome::Ok) if !log.contains(&Event::Marked(s)) => {}
            Some(_) => return HookFate::Discarded,
            None => cut = true,
        }
    }
    if cut {
        HookFate::Either(owner)
    } else {
        HookFate::With(owner)
    }
}

/// What must be true of one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Present,
    Absent,
    /// Present exactly when every other row of the transaction begun by this node is.
    Together(usize),
    /// An autocommitted statement that was in flight when the call was cut.
    Maybe,
}

/// The row every writing scope of `call` implies, from what was recorded. `cut`: the call
/// was dropped or had a deadline, so a statement may have been in flight when work stopped.
pub fn expected_rows(call: &Call, log: &[Event], cut: bool) -> Vec<(i64, Expect)> {
    let mut out = Vec::new();
    walk(call, log, 0, None, Vec::new(), cut, &mut out);
    out
}

fn walk(
    call: &Call,
    log: &[Event],
    n: usize,
    unit: Option<usize>,
    savepoints: Vec<usize>,
    cut: bool,
    out: &mut Vec<(i64, Expect)>,
) {
    let node = &call.nodes[n];
    let (unit, savepoints) = match node.role {
        Role::Refused => return,
        Role::Begins => (Some(n), Vec::new()),
        Role::Joins => (unit, savepoints),
        Role::Nests => {
            let mut savepoints = savepoints;
            savepoints.push(n);
            (unit, savepoints)
        }
        Role::Without => (None, Vec::new()),
    };
    if node.role == Role::Begins && node.before_commit && log.contains(&Event::Hooks(n)) {
        let expect = match fate(call, log, n) {
            Fate::Committed => Expect::Present,
            Fate::RolledBack => Expect::Absent,
            Fate::Unknown => Expect::Together(n),
        };
        out.push((call.hook_id(n), expect));
    }
    if node.end == End::Underneath {
        // Written in the transaction the database then ended: never kept.
        out.push((call.underneath_id(n), Expect::Absent));
    }
    if node.write {
        let wrote = log.contains(&Event::Wrote(n));
        let expect = match unit {
            None if wrote => Expect::Present,
            None if cut => Expect::Maybe,
            None => Expect::Absent,
            Some(owner) => {
                let kept = savepoints.iter().all(|&s| {
                    returned(log, s) == Some(Outcome::Ok) && !log.contains(&Event::Marked(s))
                });
                match fate(call, log, owner) {
                    _ if !wrote || !kept => Expect::Absent,
                    Fate::Committed => Expect::Present,
                    Fate::RolledBack => Expect::Absent,
                    Fate::Unknown => Expect::Together(owner),
                }
            }
        };
        out.push((call.id(n), expect));
    }
    for &child in &node.children {
        walk(call, log, child, unit, savepoints.clone(), cut, out);
    }
}
