//! Local transport: Unix socket handshake passing a sealed memfd and eventfds.
