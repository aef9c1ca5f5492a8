//! Makes an ext4 file system on a blank data partition: the image's
//! userland is this one binary, so there is no `mke2fs` to call.
//!
//! The file system is what `mke2fs -t ext4` makes with the simplest
//! feature set (a journal, extents, file types, sparse superblock backups,
//! large files; no checksums, no flex_bg, no resize inode) and few inodes:
//! the appliance keeps hundreds of files, not millions, and every inode
//! table must be written as zeros.
//!
//! `Layout::new` turns a device size into block numbers and the encoders
//! turn a layout into bytes, both pure; [`format`] only writes those bytes,
//! metadata only, never the whole device. Only a device that [`is_blank`]
//! may be formatted.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use thiserror::Error;

/// The volume label.
const LABEL: &str = "moat-data";
/// How much of a device must read as zeros for it to be blank. Group 0's
/// metadata, but for its superblock and descriptors, starts past it: a
/// format cut short by a power loss leaves the device blank, and the next
/// boot starts over.
const BLANK_SPAN: u64 = 1 << 20;
/// The smallest device formatted: room for group 0 and a 4 MiB journal.
const MIN_DEVICE: u64 = 8 << 20;

const BLOCK_SIZE: usize = 4096;
const BLOCK: u64 = BLOCK_SIZE as u64;
/// Blocks in a group: as many as one bitmap block covers.
const BLOCKS_PER_GROUP: u32 = 8 * BLOCK_SIZE as u32;
/// The most blocks without the 64bit feature, in whole groups (16 TiB).
const MAX_BLOCKS: u64 = (1 << 32) - BLOCKS_PER_GROUP as u64;
/// A group descriptor without the 64bit feature.
const DESC_SIZE: usize = 32;
const INODE_SIZE: usize = 256;
const INODES_PER_BLOCK: u32 = (BLOCK_SIZE / INODE_SIZE) as u32;
/// Inodes in the whole file system, at least.
const MIN_INODES: u32 = 2048;
/// Inodes in each group, at least: one per 512 KiB.
const MIN_INODES_PER_GROUP: u32 = 256;
/// A last group with fewer blocks than its own metadata and this many is
/// left out, as `mke2fs` does.
const MIN_TAIL_DATA: u32 = 50;

const ROOT_INO: u32 = 2;
const JOURNAL_INO: u32 = 8;
const LOST_FOUND_INO: u32 = 11;
/// The first inode that is not reserved (lost+found takes it).
const FIRST_INO: u32 = 11;

/// The random and time-dependent inputs of a format.
#[derive(Debug, Clone)]
pub struct Format {
    /// The file system's UUID (also the journal's).
    pub uuid: [u8; 16],
    /// The seed of the directory index hash.
    pub hash_seed: [u8; 16],
    /// Creation time, Unix seconds.
    pub now: u64,
}

/// Why a device could not be formatted.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MkfsError {
    /// The device cannot hold the file system's metadata and journal.
    #[error("{size} bytes is too small for the data file system (at least {MIN_DEVICE})")]
    TooSmall {
        /// The device's size in bytes.
        size: u64,
    },
    /// Reading or writing the device failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being read or written.
        what: String,
        /// The error.
        source: io::Error,
    },
}

/// Whether the device reads as zeros over its first MiB (or all of it, if
/// smaller): never formatted, or wiped. Anything else, a file system this
/// code does not know or a damaged one, is someone's data.
pub fn is_blank(device: &File) -> io::Result<bool> {
    let span = device_size(device)?.min(BLANK_SPAN);
    let mut start = vec![0; span as usize];
    device.read_exact_at(&mut start, 0)?;
    Ok(start.iter().all(|&byte| byte == 0))
}

/// Makes `device` blank (see [`is_blank`]) and flushes it: what a factory
/// reset does to the data partition before the next format. The blocks
/// past the first MiB are not overwritten; the new file system starts
/// with no inode or directory that reaches them.
pub fn blank(device: &File) -> Result<(), MkfsError> {
    let span = device_size(device)
        .map_err(|source| MkfsError::Io {
            what: "read the device size".into(),
            source,
        })?
        .min(BLANK_SPAN);
    let zeros = vec![0; span as usize];
    device
        .write_all_at(&zeros, 0)
        .map_err(|source| MkfsError::Io {
            what: "zero the first MiB".into(),
            source,
        })?;
    sync(device, "flush the zeros")
}

/// Makes the file system on `device`, a block device or a file, and flushes
/// it. Writes every group's metadata first and the primary superblock
/// last, so the device is not a file system until all of it is.
pub fn format(device: &File, params: &Format) -> Result<Layout, MkfsError> {
    let size = device_size(device).map_err(|source| MkfsError::Io {
        what: "read the device size".into(),
        source,
    })?;
    let layout = Layout::new(size)?;
    let descriptors = layout.descriptors();
    for group in (1..layout.groups).chain([0]) {
        let (first, bytes) = layout.group_metadata(group, params, &descriptors);
        write_blocks(device, first, &bytes, || {
            format!("write block group {group}")
        })?;
    }
    sync(device, "flush the metadata")?;
    let primary = layout.primary(params, &descriptors);
    write_blocks(device, 0, &primary, || "write the superblock".into())?;
    sync(device, "flush the superblock")?;
    Ok(layout)
}

/// The device's size in bytes.
fn device_size(device: &File) -> io::Result<u64> {
    let mut handle = device;
    handle.seek(SeekFrom::End(0))
}

fn write_blocks(
    device: &File,
    block: u32,
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<(), MkfsError> {
    device
        .write_all_at(bytes, u64::from(block) * BLOCK)
        .map_err(|source| MkfsError::Io {
            what: what(),
            source,
        })
}

fn sync(device: &File, what: &str) -> Result<(), MkfsError> {
    device.sync_all().map_err(|source| MkfsError::Io {
        what: what.into(),
        source,
    })
}

/// Where everything goes, in 4 KiB blocks: a pure function of the device
/// size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Blocks in the file system: the device, less a tail too small to be a
    /// group.
    blocks: u32,
    /// Block groups, the last one possibly partial.
    groups: u32,
    /// Inodes in each group.
    inodes_per_group: u32,
    /// Blocks of each copy of the group descriptor table.
    descriptor_blocks: u32,
    /// Blocks of the journal.
    journal_blocks: u32,
}

impl Layout {
    /// The layout for a device of `size` bytes (capped at 16 TiB, the most
    /// without the 64bit feature).
    fn new(size: u64) -> Result<Self, MkfsError> {
        if size < MIN_DEVICE {
            return Err(MkfsError::TooSmall { size });
        }
        let mut blocks = (size / BLOCK).min(MAX_BLOCKS) as u32;
        let layout = loop {
            let layout = Self::with_blocks(blocks);
            let tail = blocks % BLOCKS_PER_GROUP;
            let last = layout.groups - 1;
            if last == 0 || tail == 0 || tail >= layout.overhead(last) + MIN_TAIL_DATA {
                break layout;
            }
            blocks -= tail;
        };
        if layout.journal_end() > layout.group_end(0) {
            return Err(MkfsError::TooSmall { size });
        }
        Ok(layout)
    }

    /// The layout of exactly `blocks` blocks.
    fn with_blocks(blocks: u32) -> Self {
        let groups = blocks.div_ceil(BLOCKS_PER_GROUP);
        let inodes_per_group = MIN_INODES
            .div_ceil(groups)
            .next_multiple_of(INODES_PER_BLOCK)
            .max(MIN_INODES_PER_GROUP);
        let descriptor_blocks = (groups as usize * DESC_SIZE).div_ceil(BLOCK_SIZE) as u32;
        Self {
            blocks,
            groups,
            inodes_per_group,
            descriptor_blocks,
            journal_blocks: journal_blocks(blocks),
        }
    }

    /// Whether `group` holds a copy of the superblock and descriptors:
    /// groups 0, 1 and the powers of 3, 5 and 7 (sparse_super).
    fn has_superblock(group: u32) -> bool {
        let power_of = |base: u32| {
            let mut n = base;
            while n < group {
                n = n.saturating_mul(base);
            }
            n == group
        };
        group <= 1 || power_of(3) || power_of(5) || power_of(7)
    }

    /// The file system's size in bytes.
    pub fn bytes(&self) -> u64 {
        u64::from(self.blocks) * BLOCK
    }

    /// Inodes in the file system.
    fn inodes(&self) -> u32 {
        self.groups * self.inodes_per_group
    }

    fn inode_table_blocks(&self) -> u32 {
        self.inodes_per_group / INODES_PER_BLOCK
    }

    fn group_start(group: u32) -> u32 {
        group * BLOCKS_PER_GROUP
    }

    /// One past the last block of `group`.
    fn group_end(&self, group: u32) -> u32 {
        Self::group_start(group)
            .saturating_add(BLOCKS_PER_GROUP)
            .min(self.blocks)
    }

    /// Blocks of the superblock and descriptor copy at the start of `group`.
    fn superblock_blocks(&self, group: u32) -> u32 {
        if Self::has_superblock(group) {
            1 + self.descriptor_blocks
        } else {
            0
        }
    }

    /// The block bitmap of `group`, followed by its inode bitmap and inode
    /// table. In group 0 they start past the blank span (see [`BLANK_SPAN`]).
    fn block_bitmap(&self, group: u32) -> u32 {
        let after_superblock = Self::group_start(group) + self.superblock_blocks(group);
        if group == 0 {
            after_superblock.max((BLANK_SPAN / BLOCK) as u32)
        } else {
            after_superblock
        }
    }

    fn inode_bitmap(&self, group: u32) -> u32 {
        self.block_bitmap(group) + 1
    }

    fn inode_table(&self, group: u32) -> u32 {
        self.block_bitmap(group) + 2
    }

    /// Metadata blocks of `group`: superblock, descriptors, bitmaps, inodes.
    fn overhead(&self, group: u32) -> u32 {
        self.superblock_blocks(group) + 2 + self.inode_table_blocks()
    }

    /// The root directory's block, in group 0 after its inode table.
    fn root_block(&self) -> u32 {
        self.inode_table(0) + self.inode_table_blocks()
    }

    fn lost_found_block(&self) -> u32 {
        self.root_block() + 1
    }

    /// The journal's first block, right after lost+found's.
    fn journal_start(&self) -> u32 {
        self.root_block() + 2
    }

    fn journal_end(&self) -> u32 {
        self.journal_start() + self.journal_blocks
    }

    /// The used blocks of `group`, as ranges.
    fn used(&self, group: u32) -> [(u32, u32); 2] {
        let start = Self::group_start(group);
        let end = if group == 0 {
            self.journal_end()
        } else {
            self.inode_table(group) + self.inode_table_blocks()
        };
        [
            (start, start + self.superblock_blocks(group)),
            (self.block_bitmap(group), end),
        ]
    }

    fn free_blocks(&self, group: u32) -> u32 {
        let size = self.group_end(group) - Self::group_start(group);
        let used: u32 = self.used(group).iter().map(|(from, to)| to - from).sum();
        size - used
    }

    fn free_inodes(&self, group: u32) -> u32 {
        if group == 0 {
            self.inodes_per_group - FIRST_INO
        } else {
            self.inodes_per_group
        }
    }

    /// Free blocks in the whole file system.
    fn total_free_blocks(&self) -> u32 {
        (0..self.groups).map(|group| self.free_blocks(group)).sum()
    }

    /// The primary superblock (in block 0, after 1 KiB left for a boot
    /// loader) and the descriptors: blocks 0 onwards.
    fn primary(&self, params: &Format, descriptors: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0; BLOCK_SIZE];
        bytes[1024..2048].copy_from_slice(&self.superblock(params, 0));
        bytes.extend_from_slice(descriptors);
        bytes
    }

    /// The metadata of `group` written in one piece, and its first block:
    /// for groups past 0, the superblock and descriptor copy (if any), the
    /// bitmaps and the inode table; for group 0, its bitmaps, inode table,
    /// directories and the journal's superblock ([`Self::primary`] is the
    /// rest).
    fn group_metadata(&self, group: u32, params: &Format, descriptors: &[u8]) -> (u32, Vec<u8>) {
        let mut bytes = Vec::new();
        let first = if group == 0 || !Self::has_superblock(group) {
            self.block_bitmap(group)
        } else {
            bytes.extend_from_slice(&self.superblock(params, group));
            bytes.resize(BLOCK_SIZE, 0);
            bytes.extend_from_slice(descriptors);
            Self::group_start(group)
        };
        bytes.extend_from_slice(&self.block_bitmap_bytes(group));
        bytes.extend_from_slice(&self.inode_bitmap_bytes(group));
        let table = bytes.len();
        bytes.resize(table + self.inode_table_blocks() as usize * BLOCK_SIZE, 0);
        if group == 0 {
            for (ino, inode) in self.inodes_in_use(params.now) {
                let at = table + (ino as usize - 1) * INODE_SIZE;
                bytes[at..at + INODE_SIZE].copy_from_slice(&inode);
            }
            bytes.extend_from_slice(&dir_block(&[
                (ROOT_INO, "."),
                (ROOT_INO, ".."),
                (LOST_FOUND_INO, "lost+found"),
            ]));
            bytes.extend_from_slice(&dir_block(&[(LOST_FOUND_INO, "."), (ROOT_INO, "..")]));
            let journal = journal_superblock(self.journal_blocks, &params.uuid);
            bytes.extend_from_slice(&journal);
            bytes.resize(bytes.len() + BLOCK_SIZE - journal.len(), 0);
        }
        (first, bytes)
    }

    /// The inodes written in group 0's table: root, journal, lost+found.
    fn inodes_in_use(&self, now: u64) -> [(u32, [u8; INODE_SIZE]); 3] {
        let dir = |mode, links, block| Inode {
            mode,
            links,
            size: BLOCK,
            start: block,
            len: 1,
        };
        let journal = Inode {
            mode: S_IFREG | 0o600,
            links: 1,
            size: u64::from(self.journal_blocks) * BLOCK,
            start: self.journal_start(),
            len: self.journal_blocks,
        };
        [
            (
                ROOT_INO,
                dir(S_IFDIR | 0o755, 3, self.root_block()).encode(now),
            ),
            (JOURNAL_INO, journal.encode(now)),
            (
                LOST_FOUND_INO,
                dir(S_IFDIR | 0o700, 2, self.lost_found_block()).encode(now),
            ),
        ]
    }

    /// The group descriptor table, padded to whole blocks.
    fn descriptors(&self) -> Vec<u8> {
        let mut table = vec![0; self.descriptor_blocks as usize * BLOCK_SIZE];
        for (group, desc) in (0..self.groups).zip(table.chunks_exact_mut(DESC_SIZE)) {
            put32(desc, 0x00, self.block_bitmap(group));
            put32(desc, 0x04, self.inode_bitmap(group));
            put32(desc, 0x08, self.inode_table(group));
            put16(desc, 0x0C, self.free_blocks(group) as u16);
            put16(desc, 0x0E, self.free_inodes(group) as u16);
            put16(desc, 0x10, if group == 0 { 2 } else { 0 }); // directories
        }
        table
    }

    /// The block bitmap of `group`; the bits past a partial last group's
    /// end are set, as the format requires.
    fn block_bitmap_bytes(&self, group: u32) -> [u8; BLOCK_SIZE] {
        let start = Self::group_start(group);
        let mut bitmap = [0; BLOCK_SIZE];
        let past_end = (self.group_end(group), start + BLOCKS_PER_GROUP);
        for (from, to) in self.used(group).into_iter().chain([past_end]) {
            set_bits(&mut bitmap, from - start, to - start);
        }
        bitmap
    }

    /// The inode bitmap of `group`: inodes 1 to 11 in group 0 used, and the
    /// bits past the group's inodes set.
    fn inode_bitmap_bytes(&self, group: u32) -> [u8; BLOCK_SIZE] {
        let mut bitmap = [0; BLOCK_SIZE];
        if group == 0 {
            set_bits(&mut bitmap, 0, FIRST_INO);
        }
        set_bits(&mut bitmap, self.inodes_per_group, 8 * BLOCK_SIZE as u32);
        bitmap
    }

    /// The superblock, as stored in `group`.
    fn superblock(&self, params: &Format, group: u32) -> [u8; 1024] {
        let now = params.now.min(LATEST_SUPERBLOCK_TIME);
        let (now_lo, now_hi) = (now as u32, (now >> 32) as u8);
        let journal_size = u64::from(self.journal_blocks) * BLOCK;
        let mut sb = [0; 1024];
        put32(&mut sb, 0x00, self.inodes());
        put32(&mut sb, 0x04, self.blocks);
        put32(&mut sb, 0x0C, self.total_free_blocks());
        put32(&mut sb, 0x10, self.inodes() - FIRST_INO);
        put32(&mut sb, 0x18, 2); // 1024 << 2 bytes per block
        put32(&mut sb, 0x1C, 2); // and per cluster
        put32(&mut sb, 0x20, BLOCKS_PER_GROUP);
        put32(&mut sb, 0x24, BLOCKS_PER_GROUP);
        put32(&mut sb, 0x28, self.inodes_per_group);
        put32(&mut sb, 0x30, now_lo); // last write
        put16(&mut sb, 0x36, u16::MAX); // no check forced by mount count
        put16(&mut sb, 0x38, 0xEF53);
        put16(&mut sb, 0x3A, 1); // clean
        put16(&mut sb, 0x3C, 1); // on errors, continue
        put32(&mut sb, 0x40, now_lo); // last check
        put32(&mut sb, 0x4C, 1); // dynamic revision
        put32(&mut sb, 0x54, FIRST_INO);
        put16(&mut sb, 0x58, INODE_SIZE as u16);
        put16(&mut sb, 0x5A, group as u16);
        put32(&mut sb, 0x5C, COMPAT_HAS_JOURNAL);
        put32(&mut sb, 0x60, INCOMPAT_FILETYPE | INCOMPAT_EXTENTS);
        put32(&mut sb, 0x64, RO_COMPAT_SPARSE_SUPER | RO_COMPAT_LARGE_FILE);
        sb[0x68..0x78].copy_from_slice(&params.uuid);
        sb[0x78..0x78 + LABEL.len()].copy_from_slice(LABEL.as_bytes());
        put32(&mut sb, 0xE0, JOURNAL_INO);
        sb[0xEC..0xFC].copy_from_slice(&params.hash_seed);
        sb[0xFC] = 1; // half_md4 directory hash
        sb[0xFD] = 1; // the journal inode's blocks are backed up below
        put32(&mut sb, 0x108, now_lo); // created
        sb[0x10C..0x148].copy_from_slice(&extent_tree(self.journal_start(), self.journal_blocks));
        put32(&mut sb, 0x148, (journal_size >> 32) as u32);
        put32(&mut sb, 0x14C, journal_size as u32);
        put16(&mut sb, 0x15C, EXTRA_ISIZE); // the least in any inode
        put16(&mut sb, 0x15E, EXTRA_ISIZE); // wanted in new inodes
        put32(&mut sb, 0x160, 2); // unsigned directory hash
        sb[0x274] = now_hi; // last write
        sb[0x276] = now_hi; // created
        sb[0x277] = now_hi; // last check
        sb
    }
}

/// The journal's size in blocks by the file system's, as `mke2fs` picks it
/// up to 2 GiB, and at most 64 MiB.
fn journal_blocks(blocks: u32) -> u32 {
    match blocks {
        ..32_768 => 1024,
        32_768..262_144 => 4096,
        262_144..524_288 => 8192,
        _ => 16_384,
    }
}

const COMPAT_HAS_JOURNAL: u32 = 0x4;
const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_EXTENTS: u32 = 0x40;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_LARGE_FILE: u32 = 0x2;
const S_IFREG: u16 = 0o100_000;
const S_IFDIR: u16 = 0o040_000;
/// Inode flag: `i_block` holds an extent tree.
const EXTENTS_FL: u32 = 0x8_0000;
/// Bytes of an inode past the original 128 in use: the fields up to the
/// creation time and the project id, as the kernel writes them.
const EXTRA_ISIZE: u16 = 32;
/// The latest time a superblock holds: 32 bits and 8 more.
const LATEST_SUPERBLOCK_TIME: u64 = (1 << 40) - 1;
/// The latest time an inode holds: 32 signed bits and 2 epoch bits (2446).
const LATEST_INODE_TIME: u64 = (i32::MAX as u64) + (3 << 32);
/// The directory entry type of a directory.
const FT_DIR: u8 = 2;

/// An inode whose data is one extent.
struct Inode {
    mode: u16,
    links: u16,
    size: u64,
    start: u32,
    len: u32,
}

impl Inode {
    /// The 256-byte inode, owned by root, every time `now`.
    fn encode(&self, now: u64) -> [u8; INODE_SIZE] {
        let (seconds, epoch) = inode_time(now);
        let mut inode = [0; INODE_SIZE];
        put16(&mut inode, 0x00, self.mode);
        put32(&mut inode, 0x04, self.size as u32);
        for at in [0x08, 0x0C, 0x10, 0x90] {
            put32(&mut inode, at, seconds); // access, change, modify, creation
        }
        put16(&mut inode, 0x1A, self.links);
        put32(&mut inode, 0x1C, self.len * (BLOCK / 512) as u32);
        put32(&mut inode, 0x20, EXTENTS_FL);
        inode[0x28..0x64].copy_from_slice(&extent_tree(self.start, self.len));
        put32(&mut inode, 0x6C, (self.size >> 32) as u32);
        put16(&mut inode, 0x80, EXTRA_ISIZE);
        for at in [0x84, 0x88, 0x8C, 0x94] {
            put32(&mut inode, at, epoch);
        }
        inode
    }
}

/// A time as an inode stores it: the low 32 bits, read as signed, and the
/// epoch bits that carry it past 2038.
fn inode_time(now: u64) -> (u32, u32) {
    let now = now.min(LATEST_INODE_TIME) as i64;
    let low = now as u32;
    let epoch = (now - i64::from(low as i32)) >> 32;
    (low, epoch as u32 & 3)
}

/// An inode's `i_block`: an extent tree of one leaf extent, `len` blocks
/// from `start` (at most 32768, the longest initialized extent).
fn extent_tree(start: u32, len: u32) -> [u8; 60] {
    let mut tree = [0; 60];
    put16(&mut tree, 0, 0xF30A); // magic
    put16(&mut tree, 2, 1); // entries
    put16(&mut tree, 4, 4); // room in the inode
    put16(&mut tree, 16, len as u16);
    put32(&mut tree, 20, start);
    tree
}

/// A directory block holding the directories `entries`, the last entry
/// stretched to the block's end.
fn dir_block(entries: &[(u32, &str)]) -> [u8; BLOCK_SIZE] {
    let mut block = [0; BLOCK_SIZE];
    let mut at = 0;
    for (i, (ino, name)) in entries.iter().enumerate() {
        let len = if i + 1 == entries.len() {
            BLOCK_SIZE - at
        } else {
            (8 + name.len()).next_multiple_of(4)
        };
        put32(&mut block, at, *ino);
        put16(&mut block, at + 4, len as u16);
        block[at + 6] = name.len() as u8;
        block[at + 7] = FT_DIR;
        block[at + 8..at + 8 + name.len()].copy_from_slice(name.as_bytes());
        at += len;
    }
    block
}

/// The superblock of an empty, clean jbd2 journal of `blocks` blocks
/// (big-endian, unlike the rest). Its first transaction number comes from
/// the file system's UUID, so the blocks of a journal that was on the
/// device before, never zeroed here, cannot pass for transactions of this
/// one.
fn journal_superblock(blocks: u32, uuid: &[u8; 16]) -> [u8; 1024] {
    let sequence = u32::from_be_bytes([uuid[0], uuid[1], uuid[2], uuid[3]]).max(1);
    let mut jsb = [0; 1024];
    for (at, value) in [
        (0x00, 0xC03B_3998), // magic
        (0x04, 4),           // superblock, version 2
        (0x0C, BLOCK_SIZE as u32),
        (0x10, blocks),
        (0x14, 1), // first log block
        (0x18, sequence),
        (0x40, 1), // users: this file system
    ] {
        jsb[at..at + 4].copy_from_slice(&u32::to_be_bytes(value));
    }
    jsb[0x30..0x40].copy_from_slice(uuid);
    jsb
}

/// Sets bits `from..to` of a bitmap (bit 0 is the low bit of byte 0).
fn set_bits(bitmap: &mut [u8], from: u32, to: u32) {
    let mut bit = from;
    while bit < to {
        if bit.is_multiple_of(8) && to - bit >= 8 {
            bitmap[bit as usize / 8] = 0xff;
            bit += 8;
        } else {
            bitmap[bit as usize / 8] |= 1 << (bit % 8);
            bit += 1;
        }
    }
}

fn put16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

fn put32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output};

    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    const PARAMS: Format = Format {
        uuid: *b"moat-data-uuid-1",
        hash_seed: *b"moat-data-seed-1",
        now: 1_767_225_600,
    };

    /// A sparse file of `size` bytes in the temp directory, removed on drop.
    struct Device {
        path: PathBuf,
        file: File,
    }

    impl Device {
        fn new(name: &str, size: u64) -> Self {
            let path =
                std::env::temp_dir().join(format!("moat-mkfs-{}-{name}", std::process::id()));
            let file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .expect("create the device file");
            file.set_len(size).expect("size the device file");
            Self { path, file }
        }

        fn path(&self) -> &str {
            self.path.to_str().expect("a UTF-8 temp path")
        }
    }

    impl Drop for Device {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Runs an e2fsprogs tool; a missing tool fails the test.
    fn e2fs(tool: &str, args: &[&str]) -> Output {
        let path = Path::new("/usr/sbin").join(tool);
        assert!(
            path.exists(),
            "{} is missing: these tests check the file system with e2fsprogs (apt-get install e2fsprogs)",
            path.display()
        );
        Command::new(&path)
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("run {}: {err}", path.display()))
    }

    fn text(output: &Output) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }

    /// `e2fsck -fn` finds nothing to fix.
    fn assert_fsck_clean(device: &Device) {
        let output = e2fs("e2fsck", &["-fn", device.path()]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "e2fsck -fn {}:\n{}",
            device.path(),
            text(&output)
        );
    }

    /// The value of a `dumpe2fs -h` line.
    fn field<'a>(header: &'a str, name: &str) -> &'a str {
        header
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {name:?} in dumpe2fs -h:\n{header}"))
            .trim()
    }

    fn format_and_check(name: &str, size: u64) -> Layout {
        let device = Device::new(name, size);
        let layout = format(&device.file, &PARAMS).expect("format");
        assert_eq!(layout, Layout::new(size).expect("layout"));
        assert_fsck_clean(&device);

        let output = e2fs("dumpe2fs", &["-h", device.path()]);
        assert!(output.status.success(), "dumpe2fs -h:\n{}", text(&output));
        let header = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            field(&header, "Filesystem features"),
            "has_journal filetype extent sparse_super large_file"
        );
        assert_eq!(field(&header, "Filesystem volume name"), LABEL);
        assert_eq!(field(&header, "Filesystem state"), "clean");
        assert_eq!(field(&header, "Block count"), layout.blocks.to_string());
        assert_eq!(field(&header, "Inode count"), layout.inodes().to_string());
        assert_eq!(field(&header, "Inode size"), "256");
        assert_eq!(field(&header, "Journal start"), "0");
        assert_eq!(
            field(&header, "Total journal blocks"),
            layout.journal_blocks.to_string()
        );

        let output = e2fs("debugfs", &["-R", "ls -l /", device.path()]);
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("lost+found"),
            "debugfs ls -l /:\n{}",
            text(&output)
        );

        let source = Device::new(&format!("{name}-hello"), 0);
        std::fs::write(&source.path, b"hello from moat\n").expect("write the source file");
        let write = format!("write {} hello", source.path());
        let output = e2fs("debugfs", &["-w", "-R", &write, device.path()]);
        assert!(
            output.status.success(),
            "debugfs {write}:\n{}",
            text(&output)
        );
        let output = e2fs("debugfs", &["-R", "cat /hello", device.path()]);
        assert_eq!(output.stdout, b"hello from moat\n", "{}", text(&output));
        assert_fsck_clean(&device);
        layout
    }

    #[test]
    fn formats_16_mib() {
        let layout = format_and_check("16m", 16 * MIB);
        assert_eq!((layout.groups, layout.blocks), (1, 4096));
    }

    #[test]
    fn formats_256_mib() {
        let layout = format_and_check("256m", 256 * MIB);
        assert_eq!((layout.groups, layout.blocks), (2, 65_536));
    }

    #[test]
    fn formats_1_gib_and_an_odd_tail() {
        let layout = format_and_check("1g", GIB + 12 * 1024);
        assert_eq!((layout.groups, layout.blocks), (8, 262_144));
    }

    #[test]
    fn formats_1_gib_and_a_partial_group() {
        let layout = format_and_check("1g8m", GIB + 8 * MIB);
        assert_eq!((layout.groups, layout.blocks), (9, 264_192));
    }

    #[test]
    fn formats_5_gib_with_many_backups() {
        let name = "5g";
        let layout = format_and_check(name, 5 * GIB + 64 * MIB);
        assert_eq!(layout.groups, 41);
        let device = Device::new(name, 5 * GIB + 64 * MIB);
        format(&device.file, &PARAMS).expect("format");
        let output = e2fs("dumpe2fs", &[device.path()]);
        let listing = String::from_utf8_lossy(&output.stdout);
        let copies: Vec<&str> = listing
            .lines()
            .filter_map(|line| line.trim().strip_prefix("Backup superblock at "))
            .filter_map(|rest| rest.split(',').next())
            .collect();
        let groups = [1, 3, 5, 7, 9, 25, 27].map(|group| (group * 32_768).to_string());
        assert_eq!(copies, groups, "{listing}");
        let output = e2fs(
            "e2fsck",
            &["-fn", "-b", "884736", "-B", "4096", device.path()],
        );
        assert_eq!(
            output.status.code(),
            Some(0),
            "e2fsck on group 27's copy:\n{}",
            text(&output)
        );
    }

    #[test]
    fn an_interrupted_format_leaves_the_device_blank() {
        for size in [MIN_DEVICE, 16 * MIB, 5 * GIB] {
            let layout = Layout::new(size).expect("layout");
            let descriptors = layout.descriptors();
            let first = (0..layout.groups)
                .map(|group| layout.group_metadata(group, &PARAMS, &descriptors).0)
                .min();
            assert_eq!(first, Some((BLANK_SPAN / BLOCK) as u32), "{size}");
        }
    }

    #[test]
    fn writes_only_metadata() {
        use std::os::unix::fs::MetadataExt;
        let device = Device::new("sparse", 5 * GIB);
        let layout = format(&device.file, &PARAMS).expect("format");
        let written = device.file.metadata().expect("stat").blocks() * 512;
        let metadata = u64::from(layout.groups) * 20 * BLOCK + 4 * MIB;
        assert!(
            written <= metadata,
            "{written} bytes allocated, more than {metadata}"
        );
    }

    #[test]
    fn a_formatted_device_blanked_is_blank_and_formats_again() {
        let device = Device::new("reset", 16 * MIB);
        format(&device.file, &PARAMS).expect("format");
        assert!(!is_blank(&device.file).expect("read"));
        blank(&device.file).expect("blank");
        assert!(is_blank(&device.file).expect("read"));
        format(&device.file, &PARAMS).expect("format again");
        assert!(!is_blank(&device.file).expect("read"));
    }

    #[test]
    fn blank_is_all_zeros_in_the_first_mib() {
        let device = Device::new("blank", 16 * MIB);
        assert!(is_blank(&device.file).expect("read"));
        device.file.write_all_at(&[1], MIB - 1).expect("write");
        assert!(!is_blank(&device.file).expect("read"));

        let beyond = Device::new("beyond", 16 * MIB);
        beyond.file.write_all_at(&[1], MIB).expect("write");
        assert!(is_blank(&beyond.file).expect("read"));

        let small = Device::new("small", 4096);
        assert!(is_blank(&small.file).expect("read"));
        small.file.write_all_at(&[0xff], 4095).expect("write");
        assert!(!is_blank(&small.file).expect("read"));
    }

    #[test]
    fn a_formatted_device_is_not_blank() {
        let device = Device::new("formatted", 16 * MIB);
        format(&device.file, &PARAMS).expect("format");
        assert!(!is_blank(&device.file).expect("read"));
    }

    #[test]
    fn too_small_devices_are_refused() {
        let device = Device::new("tiny", 4 * MIB);
        assert!(matches!(
            format(&device.file, &PARAMS),
            Err(MkfsError::TooSmall { size }) if size == 4 * MIB
        ));
        assert!(matches!(
            Layout::new(MIN_DEVICE - 1),
            Err(MkfsError::TooSmall { .. })
        ));
        assert!(Layout::new(MIN_DEVICE).is_ok());
    }

    #[test]
    fn backups_go_to_groups_0_1_and_powers_of_3_5_7() {
        let groups: Vec<u32> = (0..400).filter(|&g| Layout::has_superblock(g)).collect();
        assert_eq!(groups, [0, 1, 3, 5, 7, 9, 25, 27, 49, 81, 125, 243, 343]);
    }

    #[test]
    fn layouts_by_size() {
        let layout = |size| Layout::new(size).expect("layout");
        let small = layout(16 * MIB);
        assert_eq!(
            small,
            Layout {
                blocks: 4096,
                groups: 1,
                inodes_per_group: 2048,
                descriptor_blocks: 1,
                journal_blocks: 1024,
            }
        );
        assert_eq!(layout(256 * MIB).inodes_per_group, 1024);
        assert_eq!(layout(256 * MIB).journal_blocks, 4096);
        assert_eq!(layout(5 * GIB).groups, 40);
        assert_eq!(layout(5 * GIB).inodes(), 40 * 256);
        assert_eq!(layout(5 * GIB).journal_blocks, 16_384);
        let large = layout(32 * GIB);
        assert_eq!((large.groups, large.descriptor_blocks), (256, 2));
        let huge = layout(20 << 40);
        assert_eq!(u64::from(huge.blocks), MAX_BLOCKS);
        assert_eq!(huge.descriptor_blocks, 1024);
        assert!(huge.journal_end() < BLOCKS_PER_GROUP);
    }

    #[test]
    fn a_last_group_too_small_for_its_metadata_is_dropped() {
        // Group 8 has no superblock copy: its metadata is 2 bitmaps and 16
        // inode table blocks.
        let eight = 8 * u64::from(BLOCKS_PER_GROUP) * BLOCK;
        let kept = Layout::new(eight + (18 + 50) * BLOCK).expect("layout");
        assert_eq!((kept.groups, kept.blocks), (9, 8 * 32_768 + 68));
        let dropped = Layout::new(eight + (18 + 49) * BLOCK).expect("layout");
        assert_eq!((dropped.groups, dropped.blocks), (8, 8 * 32_768));
        // Group 9 holds a copy: 2 more blocks.
        let nine = 9 * u64::from(BLOCKS_PER_GROUP) * BLOCK;
        assert_eq!(Layout::new(nine + 69 * BLOCK).expect("layout").groups, 9);
        assert_eq!(Layout::new(nine + 70 * BLOCK).expect("layout").groups, 10);
    }

    #[test]
    fn free_blocks_add_up() {
        for size in [16 * MIB, 256 * MIB, GIB + 8 * MIB, 5 * GIB] {
            let layout = Layout::new(size).expect("layout");
            let used: u32 = (0..layout.groups)
                .map(|group| layout.overhead(group))
                .sum::<u32>()
                + 2
                + layout.journal_blocks;
            assert_eq!(layout.total_free_blocks() + used, layout.blocks, "{size}");
        }
    }

    #[test]
    fn times_past_2038_carry_into_the_epoch_bits() {
        assert_eq!(inode_time(1_767_225_600), (1_767_225_600, 0));
        assert_eq!(inode_time(1 << 31), (1 << 31, 1));
        assert_eq!(inode_time((1 << 32) + 5), (5, 1));
    }
}
