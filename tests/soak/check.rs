//! The soak's checks: the database, the results and the hooks against the model.

use std::collections::{HashMap, HashSet};

use crate::common::{Env, Log, TestDb};
use crate::model::{self, Call, Event, Expect, Fate, HookFate, Kind, Outcome};
use crate::Finished;

/// What the checks found.
#[derive(Default)]
pub struct Report {
    pub rows: usize,
    pub wrong_rows: usize,
    pub predicted: usize,
    pub wrong_results: usize,
    pub committed: usize,
    pub rolled_back: usize,
    pub unknown: usize,
    pub failures: Vec<String>,
}

impl Report {
    fn fail(&mut self, call: &Call, log: &[Event], what: String) {
        if self.failures.len() < 10 {
            self.failures.push(format!(
                "call {}: {what}\n  tree: {call:?}\n  log: {log:?}",
                call.index
            ));
        }
    }
}

/// The hooks that ran, by the tag of the scope that registered them.
pub fn by_tag(hooks: &Log) -> HashMap<String, Vec<String>> {
    let mut by_tag: HashMap<String, Vec<String>> = HashMap::new();
    for event in hooks.events() {
        if let Some((tag, what)) = event.split_once(' ') {
            by_tag
                .entry(tag.to_owned())
                .or_default()
                .push(what.to_owned());
        }
    }
    by_tag
}

/// Compares the database, the results and the hooks with the model.
pub async fn check<D: TestDb>(
    env: &Env<D>,
    finished: &[Finished<D>],
    hooks: &HashMap<String, Vec<String>>,
) -> Report
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    let present: HashSet<i64> = env.ids().await.into_iter().collect();
    let mut report = Report::default();
    let mut expected_ids = HashSet::new();
    for f in finished {
        let call = &f.run.call;
        let log = f.run.log.lock().unwrap().clone();
        let cut = f.dropped || call.has_deadline() || f.panicked;

        // Results: a call that ran to its end returned what the rules say.
        if !f.dropped {
            for (n, expected) in model::predict(call) {
                report.predicted += 1;
                let got = model::returned(&log, n).unwrap_or(Outcome::Panicked);
                if got != expected {
                    report.wrong_results += 1;
                    report.fail(
                        call,
                        &log,
                        format!("scope {n} returned {got:?}, the rules say {expected:?}"),
                    );
                }
            }
        }
        // Nothing cut it: no error but those the model injects or the rules give. (After the
        // database ended a transaction, what its later statements get is the database's.)
        if !cut && !call.ends_underneath() {
            for e in &log {
                if let Event::Returned(n, Outcome::Err(kind), why) = e {
                    if matches!(kind, Kind::Other | Kind::Timeout | Kind::CommitUnknown) {
                        report.fail(call, &log, format!("scope {n} failed unexpectedly: {why}"));
                    }
                }
            }
        }

        // A transaction the database ended is never reported committed: on MySQL and SQLite
        // the whole transaction went, on PostgreSQL the level the failed statement aborted
        // (a NESTED scope around it that was rolled back to saves the rest).
        for e in &log {
            let Event::EndedUnderneath(n) = *e else {
                continue;
            };
            let Some((owner, savepoints)) = model::place(call, n) else {
                continue;
            };
            let rolled_back_to = |s: usize| {
                model::returned(&log, s) != Some(Outcome::Ok) || log.contains(&Event::Marked(s))
            };
            let saved = !D::ENDS_WHOLE_TRANSACTION && savepoints.iter().any(|&s| rolled_back_to(s));
            if !saved && model::fate(call, &log, owner) == Fate::Committed {
                report.fail(call, &log, format!("the transaction of scope {owner} was ended by the database (scope {n}), yet reported committed"));
            }
        }

        // Rows: what the reported outcomes imply.
        let rows = model::expected_rows(call, &log, cut);
        let mut groups: HashMap<usize, Vec<bool>> = HashMap::new();
        for &(id, expect) in &rows {
            expected_ids.insert(id);
            report.rows += 1;
            let is = present.contains(&id);
            let wrong = match expect {
                Expect::Present => !is,
                Expect::Absent => is,
                Expect::Maybe => false,
                Expect::Together(owner) => {
                    groups.entry(owner).or_default().push(is);
                    false
                }
            };
            if wrong {
                report.wrong_rows += 1;
                report.fail(
                    call,
                    &log,
                    format!("row {id} present: {is}, expected {expect:?}"),
                );
            }
        }
        for (owner, members) in &groups {
            if members.iter().any(|&p| p) && !members.iter().all(|&p| p) {
                report.wrong_rows += members.len();
                report.fail(
                    call,
                    &log,
                    format!("transaction of scope {owner} partly committed: {members:?}"),
                );
            }
        }

        // Hooks: each scope's match the fate of the transaction they went with (and its rows,
        // when its fate is unknown), or none ran, for those of a rolled-back savepoint.
        for e in &log {
            let Event::Hooks(n) = *e else { continue };
            let seen = hooks.get(&f.run.tag(n)).cloned().unwrap_or_default();
            let (owner, may_be_discarded) = match model::hook_fate(call, &log, n) {
                HookFate::With(owner) => (owner, false),
                HookFate::Either(owner) => (owner, true),
                HookFate::Discarded => {
                    if !seen.is_empty() {
                        report.fail(call, &log, format!("hooks of scope {n} ran, though its savepoint was rolled back: {seen:?}"));
                    }
                    continue;
                }
            };
            let fate = model::fate(call, &log, owner);
            let committed = seen == ["after_commit", "after_completion Committed"];
            let rolled_back = seen.len() == 2
                && seen[0].starts_with("after_rollback")
                && seen[1] == "after_completion RolledBack";
            let unknown = seen == ["after_completion Unknown"];
            let rows_say = groups.get(&owner).and_then(|m| m.first().copied());
            let ok = (may_be_discarded && seen.is_empty())
                || match fate {
                    Fate::Committed => committed,
                    Fate::RolledBack => rolled_back,
                    Fate::Unknown => {
                        (committed && rows_say != Some(false))
                            || (rolled_back && rows_say != Some(true))
                            || unknown
                    }
                };
            if n == owner {
                match fate {
                    Fate::Committed => report.committed += 1,
                    Fate::RolledBack => report.rolled_back += 1,
                    Fate::Unknown => report.unknown += 1,
                }
            }
            if !ok {
                report.fail(
                    call,
                    &log,
                    format!("hooks of scope {n} ({fate:?} with scope {owner}): {seen:?}"),
                );
            }
        }
    }
    let strays: Vec<_> = present
        .iter()
        .filter(|id| !expected_ids.contains(id))
        .collect();
    if !strays.is_empty() {
        report.wrong_rows += strays.len();
        report
            .failures
            .push(format!("rows no scope wrote: {strays:?}"));
    }
    report
}
