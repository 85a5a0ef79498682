//! The CLI's errors: each prints as one line and maps to a documented exit status.

use std::path::PathBuf;

use tmem_control::ErrorKind;

/// Exit status: the operation was refused or failed (unknown domain, daemon refused, ...).
pub const EXIT_FAILED: i32 = 1;
/// Exit status: the command line is wrong (bad number, bad uuid, missing argument, ...).
pub const EXIT_USAGE: i32 = 2;
/// Exit status: tmemd could not be reached (not running, stale socket, no answer, busy).
pub const EXIT_UNREACHABLE: i32 = 3;
/// Exit status: not allowed to use the control socket.
pub const EXIT_PERMISSION: i32 = 4;
/// Exit status: tmemd speaks another control protocol version, or sent something unreadable.
pub const EXIT_PROTOCOL: i32 = 5;

/// Everything that can go wrong in one `tmem` invocation.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A command-line argument is invalid.
    #[error("{0}")]
    Usage(String),
    /// Nothing is listening on the control socket.
    #[error(
        "tmemd is not running (no socket at {}); start it with `systemctl start tmemd` or `tmemd`",
        path.display()
    )]
    NotRunning { path: PathBuf },
    /// The socket exists but the connection or exchange failed.
    #[error("cannot reach tmemd at {}: {source}", path.display())]
    Unreachable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The socket file (or its directory) is not accessible to this user.
    #[error(
        "permission denied on {}: the control socket is root only; run tmem as root",
        path.display()
    )]
    SocketPermission { path: PathBuf },
    /// The daemon answered but speaks another protocol or sent garbage.
    #[error("{0}")]
    Protocol(String),
    /// The daemon answered with an error.
    #[error("{message}")]
    Daemon { kind: ErrorKind, message: String },
    /// The daemon answered with a reply this command did not expect.
    #[error("tmemd sent an unexpected reply to {op}: {reply}")]
    UnexpectedReply { op: &'static str, reply: String },
    /// The operation started and did not complete (e.g. tmemd ended a save half way).
    #[error("{0}")]
    Failed(String),
    /// Writing output or generated files failed.
    #[error("{what}: {source}")]
    Output {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl CliError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::NotRunning { .. } | CliError::Unreachable { .. } => EXIT_UNREACHABLE,
            CliError::SocketPermission { .. } => EXIT_PERMISSION,
            CliError::Protocol(_) | CliError::UnexpectedReply { .. } => EXIT_PROTOCOL,
            CliError::Daemon { kind, .. } => match kind {
                ErrorKind::PermissionDenied => EXIT_PERMISSION,
                ErrorKind::Version | ErrorKind::Malformed => EXIT_PROTOCOL,
                ErrorKind::InvalidArgument => EXIT_USAGE,
                ErrorKind::UnknownDomain | ErrorKind::Refused => EXIT_FAILED,
                // Like "unreachable": nothing was done, and trying again later may work.
                ErrorKind::Busy => EXIT_UNREACHABLE,
            },
            CliError::Output { .. } | CliError::Failed(_) => EXIT_FAILED,
        }
    }

    /// The message as one line (any embedded newline is folded), as printed on stderr.
    pub fn one_line(&self) -> String {
        let mut s = self.to_string();
        let mut src = std::error::Error::source(self);
        while let Some(e) = src {
            let t = e.to_string();
            if !s.contains(&t) {
                s.push_str(": ");
                s.push_str(&t);
            }
            src = e.source();
        }
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_per_class() {
        let p = PathBuf::from("/run/x.sock");
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
        assert_eq!(CliError::NotRunning { path: p.clone() }.exit_code(), 3);
        assert_eq!(CliError::SocketPermission { path: p }.exit_code(), 4);
        assert_eq!(CliError::Protocol("v".into()).exit_code(), 5);
        let d = |kind| CliError::Daemon {
            kind,
            message: "m".into(),
        };
        assert_eq!(d(ErrorKind::UnknownDomain).exit_code(), 1);
        assert_eq!(d(ErrorKind::Refused).exit_code(), 1);
        assert_eq!(d(ErrorKind::PermissionDenied).exit_code(), 4);
        assert_eq!(d(ErrorKind::Version).exit_code(), 5);
        assert_eq!(d(ErrorKind::Busy).exit_code(), 3);
    }

    #[test]
    fn messages_are_one_line() {
        let e = CliError::NotRunning {
            path: "/run/tmemd/control.sock".into(),
        };
        assert_eq!(
            e.one_line(),
            "tmemd is not running (no socket at /run/tmemd/control.sock); start it with \
             `systemctl start tmemd` or `tmemd`"
        );
        let e = CliError::Daemon {
            kind: ErrorKind::Refused,
            message: "two\nlines".into(),
        };
        assert_eq!(e.one_line(), "two lines");
    }
}
