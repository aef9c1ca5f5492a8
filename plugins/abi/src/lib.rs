//! The ABI between Moat (the host) and its WASM policy plugins (guests).
//!
//! A plugin is a core WASM module that exports `memory` and:
//! - `moat_abi_version() -> i32`: must equal [`ABI_VERSION`];
//! - `moat_query_buffer() -> i32`: address of a [`QUERY_CAPACITY`]-byte
//!   buffer the host writes the question into: the client's address
//!   ([`CLIENT_LEN`] bytes, IPv6, IPv4 as `::ffff:a.b.c.d`), then the name
//!   (lower case, dotted, no trailing dot);
//! - `moat_decide(len: i32, qtype: i32) -> i32`: decides for the `len`-byte
//!   name in the buffer; returns a [`Verdict`] code.
//!
//! The plugin's data (the compiled domain set) is a data segment the policy
//! compiler adds at [`DATA_BASE`]; it starts with a [`DataHeader`]. Nothing
//! is allocated per call.
//!
//! A plugin whose verdicts depend on the client's address also exports a
//! function named [`DECIDES_BY_CLIENT_EXPORT`]; without it, the host may
//! keep a verdict per name and type until the policy changes.
#![no_std]
#![forbid(unsafe_code)]

/// Version of this ABI; a plugin built for another is refused.
pub const ABI_VERSION: i32 = 1;

/// The export that marks a plugin whose verdicts depend on the client.
pub const DECIDES_BY_CLIENT_EXPORT: &str = "moat_decides_by_client";

/// Bytes of the client address at the start of the query buffer.
pub const CLIENT_LEN: usize = 16;

/// Longest dotted name.
pub const NAME_CAPACITY: usize = 256;

/// Size of the query buffer: client address, then name.
pub const QUERY_CAPACITY: usize = CLIENT_LEN + NAME_CAPACITY;

/// Where the compiler places the plugin's data in linear memory (4 MiB);
/// guests keep their own stack and statics below it.
pub const DATA_BASE: u32 = 4 << 20;

/// What a plugin decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Verdict {
    /// No rule matched.
    NoOpinion = 0,
    /// An allow rule matched (and no deny rule).
    Allow = 1,
    /// A block or deny rule matched.
    Block = 2,
    /// The plugin answers: records are in the answer buffer.
    Answer = 3,
}

impl Verdict {
    /// The verdict for a code returned by `moat_decide`, if valid.
    pub fn from_code(code: i32) -> Option<Self> {
        match code {
            0 => Some(Self::NoOpinion),
            1 => Some(Self::Allow),
            2 => Some(Self::Block),
            3 => Some(Self::Answer),
            _ => None,
        }
    }
}

/// Size of the answer buffer of plugins that answer
/// (`moat_answer_buffer() -> i32` gives its address).
pub const ANSWER_CAPACITY: usize = 4096;

/// Magic at the start of local-records data.
pub const RECORDS_MAGIC: [u8; 8] = *b"MOATLR01";

/// Layout of local-records data at [`DATA_BASE`]: the magic; the number of
/// exact names, of wildcard suffixes, and the bytes of the record area
/// (u32 LE each); then that many index
/// entries per kind, sorted by hash: name hash (u64 LE), offset and length
/// (u32 LE each) of the name's records in the record area that follows.
/// A name's records are DNS wire records without owner: type (u16 BE),
/// TTL (u32 BE), RDATA length (u16 BE), RDATA (names uncompressed).
///
/// An answer in the answer buffer is the record count (u16 BE) followed by
/// records in the same form.
pub const RECORDS_HEADER_LEN: usize = 20;

/// Bytes of one index entry.
pub const RECORDS_INDEX_ENTRY: usize = 16;

/// The CNAME record type, which answers every query type.
pub const TYPE_CNAME: u16 = 5;

/// Magic at the start of blocklist data.
pub const BLOCKLIST_MAGIC: [u8; 8] = *b"MOATBL01";

/// The rule tables of a blocklist, in order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Table {
    /// `policy.deny` names: block, over everything.
    DenyExact = 0,
    /// `policy.deny` suffixes.
    DenySuffix = 1,
    /// `policy.allow` names: never blocked by block rules.
    AllowExact = 2,
    /// `policy.allow` suffixes.
    AllowSuffix = 3,
    /// Blocklist names.
    BlockExact = 4,
    /// Blocklist suffixes: the name and everything below it.
    BlockSuffix = 5,
}

/// Number of tables.
pub const TABLES: usize = 6;

/// Layout of blocklist data at [`DATA_BASE`]: the magic, then per table the
/// number of entries (u32 LE), then the tables one after the other, each a
/// sorted array of u64 LE name hashes ([`name_hash`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeader {
    /// Entries per table.
    pub counts: [u32; TABLES],
}

impl DataHeader {
    /// Bytes the header takes.
    pub const LEN: usize = 8 + 4 * TABLES;

    /// Encodes the header.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut bytes = [0u8; Self::LEN];
        bytes[..8].copy_from_slice(&BLOCKLIST_MAGIC);
        for (index, count) in self.counts.iter().enumerate() {
            bytes[8 + index * 4..12 + index * 4].copy_from_slice(&count.to_le_bytes());
        }
        bytes
    }

    /// Decodes a header, checking the magic.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < Self::LEN || bytes[..8] != BLOCKLIST_MAGIC {
            return None;
        }
        let mut counts = [0u32; TABLES];
        for (index, count) in counts.iter_mut().enumerate() {
            let field = &bytes[8 + index * 4..12 + index * 4];
            *count = u32::from_le_bytes([field[0], field[1], field[2], field[3]]);
        }
        Some(Self { counts })
    }
}

/// The hash names are stored under: 64-bit FNV-1a over the dotted name's
/// bytes taken from the last to the first. Going backwards lets a guest hash
/// every suffix of a name in one pass (the hash of `example.com` is a step
/// on the way to the hash of `ads.example.com`).
pub fn name_hash(name: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET;
    for &byte in name.iter().rev() {
        hash = fnv_step(hash, byte);
    }
    hash
}

/// FNV-1a offset basis.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// One FNV-1a step.
pub fn fnv_step(hash: u64, byte: u8) -> u64 {
    (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
}

/// What every plugin defines besides `moat_decide`: the panic handler
/// (a trap the host counts as a fault), a `Buffer` type for buffers the
/// host reads and writes, the query buffer `QUERY`, and the exports
/// `moat_abi_version` and `moat_query_buffer`.
#[macro_export]
macro_rules! plugin_glue {
    () => {
        #[panic_handler]
        fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
            core::arch::wasm32::unreachable()
        }

        /// A buffer shared with the host.
        struct Buffer<const N: usize>(core::cell::UnsafeCell<[u8; N]>);

        // SAFETY: a WASM instance runs one call at a time, on one thread.
        unsafe impl<const N: usize> Sync for Buffer<N> {}

        impl<const N: usize> Buffer<N> {
            const fn new() -> Self {
                Self(core::cell::UnsafeCell::new([0; N]))
            }

            fn address(&self) -> i32 {
                self.0.get() as i32
            }
        }

        static QUERY: Buffer<{ $crate::QUERY_CAPACITY }> = Buffer::new();

        /// The ABI version this plugin speaks.
        #[unsafe(no_mangle)]
        pub extern "C" fn moat_abi_version() -> i32 {
            $crate::ABI_VERSION
        }

        /// Address of the buffer the host writes the question into.
        #[unsafe(no_mangle)]
        pub extern "C" fn moat_query_buffer() -> i32 {
            QUERY.address()
        }
    };
}
