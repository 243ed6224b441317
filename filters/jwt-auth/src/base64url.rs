//! Strict base64url decoding (RFC 4648 §5), as JOSE writes binary values: the URL-safe
//! alphabet only, no padding, and the unused bits of the last character zero, so every byte
//! string has exactly one spelling. Our own: 40 lines against the `base64` crate's 3.5 KB of
//! module code.

/// The 6-bit value of one base64url character.
fn sextet(c: u8) -> Option<u32> {
    let value = match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    };
    Some(u32::from(value))
}

/// Decodes `text`, or `None` if it is not canonical unpadded base64url.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3 + 2);
    for chunk in bytes.chunks(4) {
        let mut bits: u32 = 0;
        for &c in chunk {
            bits = (bits << 6) | sextet(c)?;
        }
        let [_, b0, b1, b2] = (bits << (6 * (4 - chunk.len()))).to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&[b0, b1, b2]),
            // Two characters carry one byte and four spare bits; three carry two and two.
            3 if bits & 0b11 == 0 => out.extend_from_slice(&[b0, b1]),
            2 if bits & 0b1111 == 0 => out.push(b0),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use proptest::prelude::*;

    #[test]
    fn decodes_rfc_4648_vectors_and_refuses_the_rest() {
        for (text, bytes) in [
            ("", &b""[..]),
            ("Zg", b"f"),
            ("Zm8", b"fo"),
            ("Zm9v", b"foo"),
            ("Zm9vYg", b"foob"),
            ("Zm9vYmE", b"fooba"),
            ("Zm9vYmFy", b"foobar"),
            ("-_8", &[0xfb, 0xff]),
        ] {
            assert_eq!(decode(text).as_deref(), Some(bytes), "{text}");
        }
        for bad in [
            "Z", "Zh", "Zm9", "Zm8=", "Zm+v", "Zm/v", "Zm9v\n", "Zm9vY", "é",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }

    proptest! {
        /// Agrees with the `base64` crate's strict URL_SAFE_NO_PAD on any input.
        #[test]
        fn agrees_with_the_base64_crate(text in "[A-Za-z0-9_+/=-]{0,24}") {
            prop_assert_eq!(decode(&text), URL_SAFE_NO_PAD.decode(&text).ok());
        }

        #[test]
        fn round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(decode(&URL_SAFE_NO_PAD.encode(&bytes)), Some(bytes));
        }
    }
}
