//! Snapshot encoding: the state tree's key/value pairs, length-prefixed.
//!
//! ```text
//!  "DRS1" | count:u64 | (klen:u32 key vlen:u32 value)*
//! ```

use super::StoreError;

const MAGIC: &[u8; 4] = b"DRS1";

pub(super) fn encode(
    pairs: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
) -> Result<Vec<u8>, StoreError> {
    let mut body = Vec::new();
    let mut count: u64 = 0;
    for kv in pairs {
        let (k, v) = kv?;
        for part in [&k, &v] {
            let len = u32::try_from(part.len()).map_err(|_| StoreError::Corrupt {
                key: String::from_utf8_lossy(&k).into_owned(),
                reason: "larger than 4 GiB".into(),
            })?;
            body.extend_from_slice(&len.to_be_bytes());
            body.extend_from_slice(part);
        }
        count += 1;
    }
    let mut out = Vec::with_capacity(body.len() + 12);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// One key and its value.
pub(super) type Pair = (Vec<u8>, Vec<u8>);

pub(super) fn decode(data: &[u8]) -> Result<Vec<Pair>, StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        key: "(snapshot)".into(),
        reason: reason.to_string(),
    };
    let mut rest = data
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| corrupt("not a drover snapshot"))?;
    let count = take(&mut rest, 8).ok_or_else(|| corrupt("truncated header"))?;
    let count = u64::from_be_bytes(count.try_into().map_err(|_| corrupt("truncated header"))?);
    let mut pairs = Vec::new();
    for _ in 0..count {
        let k = take_part(&mut rest).ok_or_else(|| corrupt("truncated key"))?;
        let v = take_part(&mut rest).ok_or_else(|| corrupt("truncated value"))?;
        pairs.push((k.to_vec(), v.to_vec()));
    }
    if !rest.is_empty() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(pairs)
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if rest.len() < n {
        return None;
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Some(head)
}

fn take_part<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = take(rest, 4)?;
    let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
    take(rest, len)
}
