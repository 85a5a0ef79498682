//! The errors of tmem-front.

use tmem_abi::TmemError;

/// Everything that can go wrong between the guest library and a backend.
#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    /// The backend could not be reached (no daemon, refused handshake, ...).
    #[error("connecting to the tmem backend failed: {what}")]
    Connect {
        what: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The backend refused this client's connection. `permanent`: retrying the same
    /// connection cannot succeed (bad parameters, limits, policy), so the client stops trying;
    /// otherwise it backs off and retries.
    #[error("the tmem backend refused the connection ({}): {reason}", if *.permanent { "permanent, not retrying" } else { "temporary, retrying" })]
    Refused { permanent: bool, reason: String },
    /// The backend went away (socket closed, no answer in time, protocol violation).
    #[error("tmem backend disconnected: {0}")]
    Disconnected(String),
    /// The backend answered with an error status.
    #[error("tmem backend refused the request: {0}")]
    Backend(#[from] TmemError),
    /// The backend answered with a status this library does not know.
    #[error("tmem backend answered with unknown status {0}")]
    UnknownStatus(i32),
    /// The handle names no pool (never created, or already destroyed).
    #[error("no pool with handle {0}")]
    NoSuchHandle(u32),
}

impl FrontError {
    /// Whether this error means the connection is dead.
    pub fn is_disconnect(&self) -> bool {
        matches!(self, FrontError::Disconnected(_))
    }

    /// Whether this error is a refusal that retrying cannot overcome.
    pub fn is_permanent_refusal(&self) -> bool {
        matches!(
            self,
            FrontError::Refused {
                permanent: true,
                ..
            }
        )
    }

    /// The error for a negative wire status.
    pub fn from_status(status: i32) -> FrontError {
        match TmemError::from_status(status) {
            Some(e) => FrontError::Backend(e),
            None => FrontError::UnknownStatus(status),
        }
    }
}
