//! The maps shared by the hooks. Sizes and names come from `tollgate_common`; the loader pins
//! them under its pin directory and reuses them across restarts.

use aya_ebpf::{
    macros::map,
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, LruHashMap,
    },
};
use tollgate_common::{
    ClientKey, ConnectRecord, ProxyConfig, DIRECT_KEY_BITS, DIRECT_MAX_ENTRIES,
    ORIG_DST_MAX_ENTRIES, PENDING_MAX_ENTRIES, TARGET_PORTS_MAX_ENTRIES,
};

/// Slot 0: the proxy's listener and the identities the hooks must never redirect.
#[map]
pub static CONFIG: Array<ProxyConfig> = Array::with_max_entries(1, 0);

/// Destination port (host order) → 1 for every port to intercept.
#[map]
pub static TARGET_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(TARGET_PORTS_MAX_ENTRIES, 0);

/// Destination prefixes (IPv6, IPv4 as IPv4-mapped) that are never redirected → `DIRECT_*`
/// reason: loopback, the host's own addresses, configured ranges.
#[map]
pub static DIRECT: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(DIRECT_MAX_ENTRIES, 0);

/// Socket cookie → record, from `connect()` until the SYN is about to leave.
#[map]
pub static PENDING: LruHashMap<u64, ConnectRecord> =
    LruHashMap::with_max_entries(PENDING_MAX_ENTRIES, 0);

/// Client (ip, port) → record, until the proxy claims it.
#[map]
pub static ORIG_DST: LruHashMap<ClientKey, ConnectRecord> =
    LruHashMap::with_max_entries(ORIG_DST_MAX_ENTRIES, 0);

/// The configuration, or `None` when the loader has not written it yet (or it is disabled).
#[inline(always)]
pub fn enabled_config() -> Option<&'static ProxyConfig> {
    let cfg = CONFIG.get(0)?;
    if cfg.flags & tollgate_common::CONFIG_FLAG_ENABLED == 0 {
        return None;
    }
    Some(cfg)
}

/// Whether the destination `ip6` (IPv4 as IPv4-mapped) lies in a direct range.
#[inline(always)]
pub fn is_direct(ip6: [u8; 16]) -> bool {
    DIRECT.get(Key::new(DIRECT_KEY_BITS, ip6)).is_some()
}
