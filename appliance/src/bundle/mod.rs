//! Policy bundles: the policy modules and synced settings, a manifest, and an
//! ed25519 signature; sealing on the primary, verification everywhere, and
//! atomic storage in the data directory.
