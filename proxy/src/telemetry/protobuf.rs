//! Protobuf wire-format writers for the few shapes OTLP spans need: tags,
//! varints, length-delimited fields, fixed64, and `KeyValue` attributes.
//! Every length is computed before its bytes are written, so each field is
//! written once.

/// Wire type of varint fields.
pub const VARINT: u8 = 0;
/// Wire type of fixed64 fields.
pub const FIXED64: u8 = 1;
/// Wire type of length-delimited fields.
pub const LEN: u8 = 2;
/// Wire type of fixed32 fields.
pub const FIXED32: u8 = 5;

/// A `KeyValue` with a string `AnyValue` as field `field`. Keys are short
/// literals (one-byte lengths).
pub fn string_attribute(out: &mut Vec<u8>, field: u32, key: &str, value: &str) {
    key_value_head(out, field, key, string_value_len(value));
    out.push(1 << 3 | LEN);
    varint(out, value.len() as u64);
    out.extend_from_slice(value.as_bytes());
}

/// A `KeyValue` with an `int_value` (`AnyValue` field 3) as field `field`.
pub fn int_attribute(out: &mut Vec<u8>, field: u32, key: &str, value: i64) {
    key_value_head(out, field, key, int_value_len(value));
    out.push(3 << 3 | VARINT);
    varint(out, value as u64);
}

/// A `KeyValue` with a `bool_value` (`AnyValue` field 2) as field `field`.
pub fn bool_attribute(out: &mut Vec<u8>, field: u32, key: &str, value: bool) {
    key_value_head(out, field, key, 2);
    out.push(2 << 3 | VARINT);
    out.push(u8::from(value));
}

/// The encoded length of [`string_attribute`]'s `KeyValue`, without its
/// tag and length prefix.
pub fn string_attribute_len(key: &str, value: &str) -> usize {
    key_value_len(key, string_value_len(value))
}

/// The encoded length of [`int_attribute`]'s `KeyValue`, without its tag
/// and length prefix.
pub fn int_attribute_len(key: &str, value: i64) -> usize {
    key_value_len(key, int_value_len(value))
}

/// `AnyValue { string_value = 1 }`'s length.
fn string_value_len(value: &str) -> usize {
    1 + varint_len(value.len() as u64) + value.len()
}

/// `AnyValue { int_value = 3 }`'s length.
fn int_value_len(value: i64) -> usize {
    1 + varint_len(value as u64)
}

/// `KeyValue { key = 1; value = 2 }`'s length for a short key.
fn key_value_len(key: &str, any_len: usize) -> usize {
    2 + key.len() + 1 + varint_len(any_len as u64) + any_len
}

/// A `KeyValue`'s tag, length and key, and its `AnyValue`'s tag and
/// length; the caller writes the value (`any_len` bytes). Reserves room
/// for all of it, so the buffer grows at most once.
fn key_value_head(out: &mut Vec<u8>, field: u32, key: &str, any_len: usize) {
    let kv_len = key_value_len(key, any_len);
    out.reserve(kv_len + 6);
    tag(out, field, LEN);
    varint(out, kv_len as u64);
    key_field(out, key);
    out.push(2 << 3 | LEN);
    varint(out, any_len as u64);
}

/// `KeyValue.key` (field 1) for a literal key shorter than 128 bytes.
#[inline]
fn key_field(out: &mut Vec<u8>, key: &str) {
    debug_assert!(key.len() < 128);
    out.push(1 << 3 | LEN);
    out.push(key.len() as u8);
    out.extend_from_slice(key.as_bytes());
}

/// An embedded message `body` as field `field`.
pub fn message(out: &mut Vec<u8>, field: u32, body: &[u8]) {
    tag(out, field, LEN);
    varint(out, body.len() as u64);
    out.extend_from_slice(body);
}

/// A string field.
#[inline]
pub fn string(out: &mut Vec<u8>, field: u32, value: &str) {
    bytes(out, field, value.as_bytes());
}

/// A bytes field.
#[inline]
pub fn bytes(out: &mut Vec<u8>, field: u32, value: &[u8]) {
    tag(out, field, LEN);
    varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// A fixed64 field.
#[inline]
pub fn fixed64(out: &mut Vec<u8>, field: u32, value: u64) {
    tag(out, field, FIXED64);
    out.extend_from_slice(&value.to_le_bytes());
}

/// A field's tag.
#[inline]
pub fn tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    varint(out, u64::from(field << 3 | u32::from(wire_type)));
}

/// A base-128 varint.
#[inline]
pub fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The encoded length of a varint.
#[inline]
pub fn varint_len(value: u64) -> usize {
    // 1 byte per started 7 bits; 0 takes one byte.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_lengths_match_the_encoding() {
        for value in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "{value}");
        }
    }

    #[test]
    fn varints_are_little_endian_groups_of_seven() {
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        out.clear();
        tag(&mut out, 16, FIXED32);
        assert_eq!(out, [0x85, 0x01]);
    }
}
