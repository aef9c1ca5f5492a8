//! The primary's view of its replicas: who is paired, their status, the
//! bundle version each applied, when each was last seen, their stats.
