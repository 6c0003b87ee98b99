//! Phone-login codes: number validation, code generation, and the hashes kept in place
//! of the code. The code is 6 decimal digits from the OS-seeded CSPRNG (`rand::rng()`);
//! with 5 attempts per code and per-phone/IP rate limits, guessing has a 5-in-a-million
//! chance per code sent.

use rand::Rng;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("phone number is required")]
    Missing,
    #[error("phone number must be in international E.164 form, e.g. +14155550123")]
    Invalid,
}

/// Normalises and validates a phone number to E.164 (`+` then 8 to 15 digits, no leading
/// zero). Spaces, dashes, dots and parentheses are removed first; the `+` is required.
pub fn normalize_phone(raw: &str) -> Result<String, PhoneError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(PhoneError::Missing);
    }
    if trimmed.len() > 32 {
        return Err(PhoneError::Invalid);
    }
    let compact: String = trimmed
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    let digits = compact.strip_prefix('+').ok_or(PhoneError::Invalid)?;
    let ok = (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if ok {
        Ok(compact)
    } else {
        Err(PhoneError::Invalid)
    }
}

pub const CODE_DIGITS: usize = 6;

/// A uniformly random 6-digit code, zero-padded.
pub fn generate_code() -> String {
    let n: u32 = rand::rng().random_range(0..1_000_000);
    format!("{n:06}")
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_numbers_are_accepted_and_normalised() {
        assert_eq!(
            normalize_phone("+14155550123").as_deref(),
            Ok("+14155550123")
        );
        assert_eq!(
            normalize_phone(" +91 98765-43210 ").as_deref(),
            Ok("+919876543210")
        );
        assert_eq!(
            normalize_phone("+44 (20) 7946.0018").as_deref(),
            Ok("+442079460018")
        );
    }

    #[test]
    fn non_e164_numbers_are_refused() {
        for bad in [
            "14155550123",
            "+0123456789",
            "+123",
            "+1234567890123456",
            "+1415abc0123",
            "++14155550123",
            "+1 415 555 0123 ext 5",
        ] {
            assert_eq!(normalize_phone(bad), Err(PhoneError::Invalid), "{bad}");
        }
        assert_eq!(normalize_phone("  "), Err(PhoneError::Missing));
    }

    #[test]
    fn codes_are_six_digits_and_vary() {
        let codes: std::collections::HashSet<String> = (0..50).map(|_| generate_code()).collect();
        assert!(
            codes
                .iter()
                .all(|c| c.len() == 6 && c.bytes().all(|b| b.is_ascii_digit()))
        );
        assert!(
            codes.len() > 40,
            "50 random codes should be nearly all distinct"
        );
    }
}
