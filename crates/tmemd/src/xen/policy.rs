//! Which domains get a tmem device.

use tmem_xen::wire::parse_u32;

use super::BACKEND_DOMID;

/// The `xen_domains` setting: every domain but dom0, or only those listed.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// `None`: every domain but dom0. Otherwise domain ids or names.
    pub domains: Option<Vec<String>>,
}

impl Policy {
    pub fn admits(&self, domid: u32, name: &str) -> bool {
        if domid == BACKEND_DOMID {
            return false;
        }
        match &self.domains {
            None => true,
            Some(list) => list.iter().any(|e| names(e, domid, name)),
        }
    }
}

/// Whether a configured entry (a domain id or a name) names domain `domid` called `name`.
/// A domain `xl migrate` is receiving is called `NAME--incoming` until it is renamed at the
/// end, after tmemd has offered its devices: it counts as `NAME`.
pub fn names(entry: &str, domid: u32, name: &str) -> bool {
    let name = name.strip_suffix("--incoming").unwrap_or(name);
    parse_u32(entry) == Some(domid) || (!name.is_empty() && entry == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_defaults_to_every_guest_and_matches_ids_or_names() {
        let all = Policy::default();
        assert!(!all.admits(0, "Domain-0"));
        assert!(all.admits(1, "a"));
        let some = Policy {
            domains: Some(vec!["3".into(), "web".into()]),
        };
        assert!(some.admits(3, "x"));
        assert!(some.admits(9, "web"));
        assert!(
            some.admits(9, "web--incoming"),
            "a migration's receiving domain"
        );
        assert!(!some.admits(9, "web--migratedaway"));
        assert!(!some.admits(9, "--incoming"));
        assert!(!some.admits(4, "db"));
        assert!(!some.admits(4, ""));
        assert!(!some.admits(0, "web"));
    }
}
