//! Strict base64url decoding (RFC 4648 §5), as JOSE writes binary values: the URL-safe
//! alphabet only, no padding, and the unused bits of the last character zero, so every byte
//! string has exactly one spelling and a token cannot be altered without changing its bytes.

use base64::Engine;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// The `base64` crate's engine, configured to refuse padding and non-canonical trailing bits.
const STRICT_URL_SAFE: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(false),
);

/// Decodes `text`, or `None` if it is not canonical unpadded base64url.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    STRICT_URL_SAFE.decode(text).ok()
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
