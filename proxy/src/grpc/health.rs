//! The `grpc.health.v1.Health/Check` call, encoded and decoded by hand
//! (two one-field messages; no protobuf library on the request path).

use bytes::{BufMut, Bytes, BytesMut};

/// The method's path.
pub const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// `HealthCheckResponse.ServingStatus.SERVING`.
pub const SERVING: u64 = 1;

/// The framed request body: a `HealthCheckRequest { service }` message
/// behind gRPC's 5-byte prefix (uncompressed, length).
pub fn check_request(service: &str) -> Bytes {
    let mut message = BytesMut::new();
    if !service.is_empty() {
        message.put_u8(0x0a); // field 1, length-delimited
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    framed.put_slice(&message);
    framed.freeze()
}

/// The `status` of a framed `HealthCheckResponse` (0, `UNKNOWN`, when the
/// field is absent, as protobuf defaults it); `None` when the body is not
/// one uncompressed message.
pub fn serving_status(body: &[u8]) -> Option<u64> {
    let (&compressed, rest) = body.split_first()?;
    if compressed != 0 || rest.len() < 4 {
        return None;
    }
    let (len, mut message) = rest.split_at(4);
    let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
    if message.len() != len {
        return None;
    }
    let mut status = 0;
    while let Some((&tag, rest)) = message.split_first() {
        message = rest;
        match tag & 0x07 {
            0 => {
                let value = read_varint(&mut message)?;
                if tag >> 3 == 1 {
                    status = value;
                }
            }
            2 => {
                let n = usize::try_from(read_varint(&mut message)?).ok()?;
                message = message.get(n..)?;
            }
            _ => return None,
        }
    }
    Some(status)
}

/// The name of a serving status, for the health note.
pub fn status_name(status: u64) -> &'static str {
    match status {
        0 => "UNKNOWN",
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "an unknown status",
    }
}

fn put_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

fn read_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_service_name_behind_the_prefix() {
        assert_eq!(&check_request("")[..], [0, 0, 0, 0, 0]);
        assert_eq!(
            &check_request("api")[..],
            [0, 0, 0, 0, 5, 0x0a, 3, b'a', b'p', b'i']
        );
    }

    #[test]
    fn decodes_the_serving_status() {
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(SERVING));
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
        assert_eq!(serving_status(&[0, 0, 0, 0, 0]), Some(0), "the default");
        assert_eq!(
            serving_status(&[1, 0, 0, 0, 2, 0x08, 1]),
            None,
            "compressed"
        );
        assert_eq!(serving_status(&[0, 0, 0, 0, 3, 0x08, 1]), None, "short");
        assert_eq!(
            serving_status(&[0, 0, 0, 0, 5, 0x12, 1, b'x', 0x08, 1]),
            Some(SERVING),
            "unknown fields skipped"
        );
    }
}
