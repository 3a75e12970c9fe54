//! Names of data sources and scopes: a `&'static str` at no cost, or a string known only at
//! run time (a tenant's pool registered from configuration).

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// The name of a data source or of a scope.
///
/// Made from a `&'static str` (what the `#[transactional]` macro and most code pass, copied
/// for free) or from a `String` / `Arc<str>` built at run time, which is shared, never copied.
/// It reads as a `&str`.
///
/// ```
/// use transactional_runtime::{Name, Transactional};
///
/// let tenant = String::from("tenant_42");
/// let scope = Transactional::new().data_source(tenant.clone());
/// assert_eq!(scope.options().data_source, "tenant_42");
///
/// let name: Name = "default".into();
/// assert_eq!(name.len(), 7);
/// ```
#[derive(Clone)]
pub struct Name(Repr);

#[derive(Clone)]
enum Repr {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Name {
    /// A name known at compile time.
    pub const fn from_static(name: &'static str) -> Name {
        Name(Repr::Static(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Static(name) => name,
            Repr::Shared(name) => name,
        }
    }
}

impl Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&'static str> for Name {
    fn from(name: &'static str) -> Name {
        Name::from_static(name)
    }
}

impl From<String> for Name {
    fn from(name: String) -> Name {
        Name(Repr::Shared(name.into()))
    }
}

impl From<Arc<str>> for Name {
    fn from(name: Arc<str>) -> Name {
        Name(Repr::Shared(name))
    }
}

impl From<&Name> for Name {
    fn from(name: &Name) -> Name {
        name.clone()
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Name {}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<Name> for &str {
    fn eq(&self, other: &Name) -> bool {
        *self == other.as_str()
    }
}

impl Hash for Name {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_and_shared_names_compare_by_their_text() {
        let a = Name::from_static("orders");
        let b = Name::from(String::from("orders"));
        assert_eq!(a, b);
        assert_eq!(a, "orders");
        assert_eq!("orders", b);
        assert_eq!(format!("{a} {b:?}"), "orders \"orders\"");
        let mut set = std::collections::HashSet::new();
        set.insert(a);
        assert!(set.contains("orders"));
    }
}
