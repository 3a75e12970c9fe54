//! Suggestions for what a misspelled option or value most likely meant.

use crate::keys::{Key, ISOLATIONS, PROPAGATIONS};

/// The message for an option name that is not one of [`KEYS`].
pub(crate) fn unknown_key_message(written: &str) -> String {
    let hint = match key_alias(written) {
        Some(hint) => format!("; {hint}"),
        None => match suggest(written, &Key::names(), false) {
            Some(key) => format!("; did you mean `{key}`?"),
            None => match value_used_as_key(written) {
                Some(hint) => format!("; {hint}"),
                None => String::new(),
            },
        },
    };
    // "...; did you mean `x`? expected one of: ..." but "...; <advice>; expected one of: ..."
    let separator = if hint.ends_with('?') { "" } else { ";" };
    format!(
        "unknown option `{written}` for #[transactional]{hint}{separator} expected one of: {}",
        Key::names().join(", ")
    )
}

/// Hints for names people bring from Spring's `@Transactional`.
fn key_alias(written: &str) -> Option<&'static str> {
    match normalize(written).as_str() {
        "rollbackfor" | "rollbackforclassname" => Some(
            "every `Err` already rolls back; to commit on some errors instead, use \
             `no_rollback_for = <predicate>`",
        ),
        "norollbackforclassname" => Some("did you mean `no_rollback_for`?"),
        "value" | "transactionmanager" | "datasourcename" => Some("did you mean `data_source`?"),
        "isolationlevel" | "level" => Some("did you mean `isolation`?"),
        "timeoutsecs" | "timeoutseconds" | "timeoutms" | "timeoutmillis" => Some(
            "did you mean `timeout`? it takes seconds (`timeout = 5`) or a string like \"500ms\"",
        ),
        "skip" | "exclude" | "ignore" => Some(
            "`skip` stands alone: `#[transactional(skip)]` on a method leaves it out of its \
             impl block's #[transactional]",
        ),
        _ => None,
    }
}

/// `#[transactional(REQUIRES_NEW)]`: a value written where an option name belongs.
pub(crate) fn value_used_as_key(written: &str) -> Option<String> {
    let upper = written.to_uppercase();
    if let Some((spring, _)) = PROPAGATIONS.iter().find(|(s, _)| *s == upper) {
        return Some(format!("did you mean `propagation = \"{spring}\"`?"));
    }
    if let Some((spring, _)) = ISOLATIONS.iter().find(|(s, _)| *s == upper) {
        return Some(format!("did you mean `isolation = \"{spring}\"`?"));
    }
    None
}

/// Lower-cases and drops `_`, `-` and spaces: `readOnly`, `read-only` and `READ_ONLY` all
/// become `readonly`.
fn normalize(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '_' | '-' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The candidate `written` most likely meant, if any is close enough.
///
/// A candidate that differs only in case and separators wins outright (`"required"`,
/// `readOnly`, `RequiresNew`); otherwise the nearest by edit distance, compared in the
/// candidates' case when `upper` (the Spring constants), if within a third of its length.
pub(crate) fn suggest<'a>(written: &str, candidates: &[&'a str], upper: bool) -> Option<&'a str> {
    let norm = normalize(written);
    if let Some(c) = candidates.iter().find(|c| normalize(c) == norm) {
        return Some(c);
    }
    let cased = if upper {
        written.to_uppercase()
    } else {
        written.to_lowercase()
    };
    candidates
        .iter()
        .map(|c| (levenshtein(&cased, c), *c))
        .filter(|(d, c)| *d <= (c.chars().count() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// The edit distance (insertions, deletions, substitutions) between two strings.
pub(crate) fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn propagations() -> Vec<&'static str> {
        PROPAGATIONS.iter().map(|(s, _)| *s).collect()
    }

    fn isolations() -> Vec<&'static str> {
        ISOLATIONS.iter().map(|(s, _)| *s).collect()
    }
    #[test]
    fn levenshtein_distances() {
        assert_eq!(levenshtein("", ""), 0);
        assert_eq!(levenshtein("abc", ""), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("REQUIRE_NEW", "REQUIRES_NEW"), 1);
        assert_eq!(levenshtein("flaw", "lawn"), 2);
        assert_eq!(levenshtein("same", "same"), 0);
    }
    #[test]
    fn value_suggestions() {
        let p = propagations();
        assert_eq!(suggest("REQUIRE_NEW", &p, true), Some("REQUIRES_NEW"));
        assert_eq!(suggest("required", &p, true), Some("REQUIRED"));
        assert_eq!(suggest("RequiresNew", &p, true), Some("REQUIRES_NEW"));
        assert_eq!(suggest("requires-new", &p, true), Some("REQUIRES_NEW"));
        assert_eq!(suggest("not supported", &p, true), Some("NOT_SUPPORTED"));
        assert_eq!(suggest("NESTD", &p, true), Some("NESTED"));
        assert_eq!(suggest("MANDATROY", &p, true), Some("MANDATORY"));
        assert_eq!(suggest("whatever", &p, true), None);
        assert_eq!(suggest("", &p, true), None);
        let i = isolations();
        assert_eq!(suggest("SERIALISABLE", &i, true), Some("SERIALIZABLE"));
        assert_eq!(suggest("read_comitted", &i, true), Some("READ_COMMITTED"));
        assert_eq!(suggest("ReadCommitted", &i, true), Some("READ_COMMITTED"));
        assert_eq!(suggest("SNAPSHOT", &i, true), None);
    }
    #[test]
    fn key_suggestions() {
        assert_eq!(
            suggest("propogation", &Key::names(), false),
            Some("propagation")
        );
        assert_eq!(suggest("readOnly", &Key::names(), false), Some("read_only"));
        assert_eq!(suggest("readonly", &Key::names(), false), Some("read_only"));
        assert_eq!(
            suggest("dataSource", &Key::names(), false),
            Some("data_source")
        );
        assert_eq!(suggest("timout", &Key::names(), false), Some("timeout"));
        assert_eq!(
            suggest("noRollbackFor", &Key::names(), false),
            Some("no_rollback_for")
        );
        assert_eq!(suggest("krate", &Key::names(), false), Some("crate"));
        assert_eq!(suggest("foo", &Key::names(), false), None);
    }
    #[test]
    fn unknown_key_messages() {
        assert_eq!(
            unknown_key_message("foo"),
            "unknown option `foo` for #[transactional]; expected one of: propagation, \
             isolation, read_only, timeout, data_source, no_rollback_for, retry, send, local, \
             crate"
        );
        assert_eq!(
            unknown_key_message("isolaton"),
            "unknown option `isolaton` for #[transactional]; did you mean `isolation`? \
             expected one of: propagation, isolation, read_only, timeout, data_source, \
             no_rollback_for, retry, send, local, crate"
        );
        assert!(unknown_key_message("rollback_for").contains("every `Err` already rolls back"));
        assert!(unknown_key_message("transactionManager").contains("`data_source`"));
        assert!(unknown_key_message("REQUIRES_NEW")
            .contains("did you mean `propagation = \"REQUIRES_NEW\"`?"));
        assert!(unknown_key_message("serializable")
            .contains("did you mean `isolation = \"SERIALIZABLE\"`?"));
    }
}
