//! Who a client is: the key under which the store finds, reattaches and authorises it.
//!
//! Xen guests are named by their domain id, which Xen vouches for. Local guests are named by
//! the uid the kernel reports for their socket (`SO_PEERCRED`) plus a label the guest picks
//! inside that uid's namespace, so no local process can ever claim a Xen domain's identity or
//! another user's.

use std::fmt;
use std::str::FromStr;

/// A client's identity. Ordered Xen domains first, then local guests by uid and label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    /// A Xen domain.
    Xen { domid: u32 },
    /// A local process: the uid the kernel reports, and the label its hello names.
    Local { uid: u32, label: u32 },
}

impl fmt::Display for Identity {
    /// `7` for Xen domain 7, `local:1000:7` for label 7 of uid 1000.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Xen { domid } => write!(f, "{domid}"),
            Identity::Local { uid, label } => write!(f, "local:{uid}:{label}"),
        }
    }
}

impl FromStr for Identity {
    type Err = String;

    /// The forms [`Display`](fmt::Display) writes: `DOMID` or `local:UID:LABEL`.
    fn from_str(s: &str) -> Result<Self, String> {
        let num = |what: &str, v: &str| {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{what} '{v}' is not a number"));
            }
            v.parse::<u32>()
                .map_err(|_| format!("{what} {v} is out of range"))
        };
        match s.strip_prefix("local:") {
            Some(rest) => {
                let (uid, label) = rest
                    .split_once(':')
                    .ok_or_else(|| format!("'{s}': a local client is written local:UID:LABEL"))?;
                Ok(Identity::Local {
                    uid: num("uid", uid)?,
                    label: num("label", label)?,
                })
            }
            None => Ok(Identity::Xen {
                domid: num("domain id", s)?,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects() {
        for id in [
            Identity::Xen { domid: 7 },
            Identity::Local {
                uid: 1000,
                label: 7,
            },
        ] {
            assert_eq!(id.to_string().parse::<Identity>(), Ok(id));
        }
        for bad in [
            "",
            "local:",
            "local:1",
            "local:x:1",
            "local:1:",
            "-1",
            "99999999999",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad}");
        }
        assert!(Identity::Xen { domid: u32::MAX } < Identity::Local { uid: 0, label: 0 });
    }
}
