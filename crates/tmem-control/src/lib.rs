//! The tmemd control protocol: versioned request/response messages between tmemd and the tmem CLI.
