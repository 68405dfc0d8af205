//! A small, bounded zip reader and a stored-only writer: what `.npz` golden sets and the golden
//! bundle need, and nothing more.
//!
//! The reader trusts only the central directory for sizes (numpy writes zip64 local headers
//! whose sizes are placeholders), checks that each local header names the same member, refuses
//! encrypted members, duplicate names and anything over the caller's byte budget, inflates
//! deflated members (`numpy.savez_compressed`) with an output limit, and checks every CRC-32.
//! Multi-disk archives and zip64 end records are refused: a golden set is far below 4 GiB.

use std::collections::BTreeSet;

/// Most members an archive may hold.
pub const MAX_MEMBERS: usize = 1024;
/// Longest member name, bytes.
const MAX_NAME: usize = 1024;

const LOCAL: u32 = 0x0403_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const END: u32 = 0x0605_4b50;
const END_LEN: usize = 22;
const LOCAL_LEN: usize = 30;
const CENTRAL_LEN: usize = 46;
const ZIP64_EXTRA: u16 = 0x0001;
/// 1980-01-01 00:00:00 in MS-DOS form: written on every member so output is reproducible.
const DOS_DATE: u16 = (1 << 5) | 1;

/// An archive that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ZipError {
    /// No end-of-central-directory record: not a zip, or cut short.
    #[error("not a zip archive (no end of central directory record)")]
    NoEnd,
    /// A structure runs past the end of the bytes or contradicts itself.
    #[error("zip archive is damaged: {0}")]
    Damaged(&'static str),
    /// A feature this reader does not take.
    #[error("zip archive uses {0}, which is not supported")]
    Unsupported(&'static str),
    /// Too many members.
    #[error("zip archive has more than {MAX_MEMBERS} members")]
    TooManyMembers,
    /// Two members with one name: which one counts would be up to the reader.
    #[error("zip archive holds {0:?} twice")]
    Duplicate(String),
    /// A member name that is not UTF-8 or too long.
    #[error("zip archive has a member name that is not UTF-8 or longer than {MAX_NAME} bytes")]
    Name,
    /// Unpacking would exceed the caller's budget.
    #[error("zip member {name:?} would take the archive past {limit} bytes unpacked")]
    TooLarge {
        /// The member.
        name: String,
        /// The budget, bytes.
        limit: u64,
    },
    /// Inflating a member failed or gave another length than recorded.
    #[error("zip member {0:?} does not inflate to its recorded length")]
    Inflate(String),
    /// The CRC-32 does not match.
    #[error("zip member {0:?} fails its CRC-32 check")]
    Crc(String),
}

/// One member, unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The name, as stored (`/`-separated).
    pub name: String,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Reads every member of `bytes`, in central-directory order, unpacking at most `limit` bytes
/// in all.
pub fn read(bytes: &[u8], limit: u64) -> Result<Vec<Member>, ZipError> {
    let end = find_end(bytes)?;
    let field = |at: usize| u16_at(bytes, end + at);
    let (disk, cd_disk, here, total) = (field(4)?, field(6)?, field(8)?, field(10)?);
    let cd_size = u32_at(bytes, end + 12)? as usize;
    let cd_offset = u32_at(bytes, end + 16)? as usize;
    if disk != 0 || cd_disk != 0 || here != total {
        return Err(ZipError::Unsupported("several disks"));
    }
    if total == 0xFFFF || cd_offset == 0xFFFF_FFFF || cd_size == 0xFFFF_FFFF {
        return Err(ZipError::Unsupported("a zip64 end record"));
    }
    if usize::from(total) > MAX_MEMBERS {
        return Err(ZipError::TooManyMembers);
    }
    let cd_end = cd_offset.checked_add(cd_size).ok_or(ZipError::Damaged("central directory size"))?;
    if cd_end > end {
        return Err(ZipError::Damaged("central directory runs past its end record"));
    }
    let mut at = cd_offset;
    let mut names = BTreeSet::new();
    let mut members = Vec::with_capacity(usize::from(total));
    let mut unpacked = 0u64;
    for _ in 0..total {
        let entry = central_entry(bytes, at, cd_end)?;
        at = entry.next;
        if !names.insert(entry.name.clone()) {
            return Err(ZipError::Duplicate(entry.name));
        }
        unpacked = unpacked.saturating_add(entry.size);
        if unpacked > limit {
            return Err(ZipError::TooLarge { name: entry.name, limit });
        }
        let data = member_data(bytes, &entry)?;
        members.push(Member { name: entry.name, data });
    }
    Ok(members)
}

/// Writes `members` as a zip archive of stored (uncompressed) members with a fixed date, so the
/// same members always give the same bytes.
pub fn write(members: &[Member]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for m in members {
        // Callers pass a few small members; the format's 32-bit fields hold them.
        let offset = out.len() as u32;
        let crc = crc32(&m.data);
        let size = m.data.len() as u32;
        let name = m.name.as_bytes();
        out.extend_from_slice(&LOCAL.to_le_bytes());
        put16(&mut out, &[20, 0x0800, 0, 0, DOS_DATE]); // version, flags (UTF-8 names), stored, time, date
        put32(&mut out, &[crc, size, size]);
        put16(&mut out, &[name.len() as u16, 0]);
        out.extend_from_slice(name);
        out.extend_from_slice(&m.data);

        central.extend_from_slice(&CENTRAL.to_le_bytes());
        put16(&mut central, &[(3 << 8) | 20, 20, 0x0800, 0, 0, DOS_DATE]); // made by Unix, needed, flags, stored, time, date
        put32(&mut central, &[crc, size, size]);
        put16(&mut central, &[name.len() as u16, 0, 0, 0, 0]); // name, extra, comment, disk, internal attributes
        put32(&mut central, &[0o100_644 << 16, offset]); // a regular file, rw-r--r--
        central.extend_from_slice(name);
    }
    let cd_offset = out.len() as u32;
    let cd_size = central.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&END.to_le_bytes());
    let count = members.len() as u16;
    put16(&mut out, &[0, 0, count, count]);
    put32(&mut out, &[cd_size, cd_offset]);
    put16(&mut out, &[0]);
    out
}

struct Entry {
    name: String,
    method: u16,
    crc: u32,
    compressed: u64,
    size: u64,
    local: u64,
    next: usize,
}

fn find_end(bytes: &[u8]) -> Result<usize, ZipError> {
    if bytes.len() < END_LEN {
        return Err(ZipError::NoEnd);
    }
    // The record sits at the very end unless the archive has a comment (at most 64 KiB).
    let lowest = bytes.len().saturating_sub(END_LEN + usize::from(u16::MAX));
    (lowest..=bytes.len() - END_LEN).rev().find(|&at| u32_at(bytes, at) == Ok(END)).ok_or(ZipError::NoEnd)
}

fn central_entry(bytes: &[u8], at: usize, cd_end: usize) -> Result<Entry, ZipError> {
    if at.checked_add(CENTRAL_LEN).is_none_or(|e| e > cd_end) || u32_at(bytes, at)? != CENTRAL {
        return Err(ZipError::Damaged("central directory entry"));
    }
    let flags = u16_at(bytes, at + 8)?;
    if flags & 1 != 0 {
        return Err(ZipError::Unsupported("encryption"));
    }
    let method = u16_at(bytes, at + 10)?;
    let crc = u32_at(bytes, at + 16)?;
    let mut compressed = u64::from(u32_at(bytes, at + 20)?);
    let mut size = u64::from(u32_at(bytes, at + 24)?);
    let name_len = usize::from(u16_at(bytes, at + 28)?);
    let extra_len = usize::from(u16_at(bytes, at + 30)?);
    let comment_len = usize::from(u16_at(bytes, at + 32)?);
    let mut local = u64::from(u32_at(bytes, at + 42)?);
    let name_at = at + CENTRAL_LEN;
    let next = name_at + name_len + extra_len + comment_len;
    if next > cd_end {
        return Err(ZipError::Damaged("central directory entry runs past the directory"));
    }
    if name_len > MAX_NAME {
        return Err(ZipError::Name);
    }
    let name = std::str::from_utf8(&bytes[name_at..name_at + name_len]).map_err(|_| ZipError::Name)?.to_owned();
    // Saturated 32-bit fields are in the zip64 extra field, in this order, each only if saturated.
    let mut extra = &bytes[name_at + name_len..name_at + name_len + extra_len];
    while extra.len() >= 4 {
        let id = u16::from_le_bytes([extra[0], extra[1]]);
        let len = usize::from(u16::from_le_bytes([extra[2], extra[3]]));
        let body = extra.get(4..4 + len).ok_or(ZipError::Damaged("extra field"))?;
        if id == ZIP64_EXTRA {
            let mut values = body.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
            for field in [&mut size, &mut compressed, &mut local] {
                if *field == 0xFFFF_FFFF {
                    *field = values.next().ok_or(ZipError::Damaged("zip64 extra field"))?;
                }
            }
        }
        extra = &extra[4 + len..];
    }
    Ok(Entry { name, method, crc, compressed, size, local, next })
}

fn member_data(bytes: &[u8], e: &Entry) -> Result<Vec<u8>, ZipError> {
    let local = usize::try_from(e.local).map_err(|_| ZipError::Damaged("member offset"))?;
    if local.checked_add(LOCAL_LEN).is_none_or(|end| end > bytes.len()) || u32_at(bytes, local)? != LOCAL {
        return Err(ZipError::Damaged("local header"));
    }
    let name_len = usize::from(u16_at(bytes, local + 26)?);
    let extra_len = usize::from(u16_at(bytes, local + 28)?);
    let name_at = local + LOCAL_LEN;
    if bytes.get(name_at..name_at + name_len) != Some(e.name.as_bytes()) {
        return Err(ZipError::Damaged("local header names another member"));
    }
    let start = name_at + name_len + extra_len;
    let data = usize::try_from(e.compressed)
        .ok()
        .and_then(|len| bytes.get(start..start.checked_add(len)?))
        .ok_or(ZipError::Damaged("member runs past the end of the archive"))?;
    let size = usize::try_from(e.size).map_err(|_| ZipError::Damaged("member size"))?;
    let out = match e.method {
        0 if data.len() == size => data.to_vec(),
        0 => return Err(ZipError::Damaged("stored member with two lengths")),
        8 => miniz_oxide::inflate::decompress_to_vec_with_limit(data, size)
            .ok()
            .filter(|out| out.len() == size)
            .ok_or_else(|| ZipError::Inflate(e.name.clone()))?,
        _ => return Err(ZipError::Unsupported("a compression method other than stored or deflate")),
    };
    if crc32(&out) != e.crc {
        return Err(ZipError::Crc(e.name.clone()));
    }
    Ok(out)
}

fn u16_at(bytes: &[u8], at: usize) -> Result<u16, ZipError> {
    let b = bytes.get(at..at + 2).ok_or(ZipError::Damaged("truncated"))?;
    Ok(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32, ZipError> {
    let b = bytes.get(at..at + 4).ok_or(ZipError::Damaged("truncated"))?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn put16(out: &mut Vec<u8>, values: &[u16]) {
    values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
}

fn put32(out: &mut Vec<u8>, values: &[u32]) {
    values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
}

/// The CRC-32 zip uses (IEEE 802.3, reflected).
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !data.iter().fold(!0u32, |c, &b| TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, data: &[u8]) -> Member {
        Member { name: name.to_owned(), data: data.to_vec() }
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn what_is_written_reads_back_and_is_reproducible() {
        let members = vec![member("expectations.json", b"{}"), member("golden.npz", &[0, 1, 2, 255])];
        let bytes = write(&members);
        assert_eq!(read(&bytes, 1 << 20), Ok(members.clone()));
        assert_eq!(write(&members), bytes);
        assert_eq!(read(&write(&[]), 0), Ok(vec![]));
    }

    #[test]
    fn damaged_or_hostile_archives_are_refused() {
        let good = write(&[member("a.npy", b"hello"), member("b.npy", b"world")]);
        let flip = |at: usize| {
            let mut b = good.clone();
            b[at] ^= 0xFF;
            b
        };
        let data_at = LOCAL_LEN + "a.npy".len();
        let cases: Vec<(&str, Vec<u8>, u64, ZipError)> = vec![
            ("empty", vec![], 1 << 20, ZipError::NoEnd),
            ("not a zip", b"definitely not a zip archive at all".to_vec(), 1 << 20, ZipError::NoEnd),
            ("cut short", good[..good.len() - 30].to_vec(), 1 << 20, ZipError::NoEnd),
            ("a flipped data byte", flip(data_at), 1 << 20, ZipError::Crc("a.npy".into())),
            ("over the budget", good.clone(), 9, ZipError::TooLarge { name: "b.npy".into(), limit: 9 }),
            ("a damaged local header", flip(0), 1 << 20, ZipError::Damaged("local header")),
            (
                "one name twice",
                write(&[member("a.npy", b"1"), member("a.npy", b"2")]),
                1 << 20,
                ZipError::Duplicate("a.npy".into()),
            ),
        ];
        for (what, bytes, limit, want) in cases {
            assert_eq!(read(&bytes, limit), Err(want), "{what}");
        }
    }

    #[test]
    fn encrypted_and_unknown_methods_are_refused() {
        let good = write(&[member("a.npy", b"hello")]);
        let cd = good.len() - END_LEN - (CENTRAL_LEN + "a.npy".len());
        let mut encrypted = good.clone();
        encrypted[cd + 8] |= 1;
        assert_eq!(read(&encrypted, 1 << 20), Err(ZipError::Unsupported("encryption")));
        let mut bzip2 = good.clone();
        bzip2[cd + 10] = 12;
        assert_eq!(
            read(&bzip2, 1 << 20),
            Err(ZipError::Unsupported("a compression method other than stored or deflate"))
        );
    }

    #[test]
    fn deflated_members_inflate_within_their_recorded_length() {
        let data = b"golden golden golden golden golden golden".repeat(20);
        let deflated = miniz_oxide::deflate::compress_to_vec(&data, 6);
        // A stored archive rewritten to hold the deflated bytes under method 8.
        let mut bytes = Vec::new();
        let name = b"x.npy";
        let (crc, size, packed) = (crc32(&data), data.len() as u32, deflated.len() as u32);
        bytes.extend_from_slice(&LOCAL.to_le_bytes());
        put16(&mut bytes, &[20, 0, 8, 0, DOS_DATE]);
        put32(&mut bytes, &[crc, packed, size]);
        put16(&mut bytes, &[name.len() as u16, 0]);
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(&deflated);
        let cd_offset = bytes.len() as u32;
        bytes.extend_from_slice(&CENTRAL.to_le_bytes());
        put16(&mut bytes, &[20, 20, 0, 8, 0, DOS_DATE]);
        put32(&mut bytes, &[crc, packed, size]);
        put16(&mut bytes, &[name.len() as u16, 0, 0, 0, 0]);
        put32(&mut bytes, &[0, 0]);
        bytes.extend_from_slice(name);
        let cd_size = bytes.len() as u32 - cd_offset;
        bytes.extend_from_slice(&END.to_le_bytes());
        put16(&mut bytes, &[0, 0, 1, 1]);
        put32(&mut bytes, &[cd_size, cd_offset]);
        put16(&mut bytes, &[0]);
        assert_eq!(read(&bytes, 1 << 20), Ok(vec![Member { name: "x.npy".into(), data: data.clone() }]));

        // A member that claims to be smaller than what it inflates to is refused, not trusted.
        let mut lying = bytes.clone();
        let cd = cd_offset as usize;
        lying[cd + 24..cd + 28].copy_from_slice(&10u32.to_le_bytes());
        assert_eq!(read(&lying, 1 << 20), Err(ZipError::Inflate("x.npy".into())));
    }
}
