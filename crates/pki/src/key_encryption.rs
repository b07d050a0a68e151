//! Passphrase protection of private keys: PKCS#8 `ENCRYPTED PRIVATE KEY`
//! documents using PBES2 (RFC 8018), as `openssl pkcs8 -topk8 -v2 aes-256-cbc`
//! writes them.
//!
//! This module owns the encrypted key format. The ASN.1 structures come from
//! the `pkcs8`/`pkcs5` crates, compiled without their encryption features;
//! PBKDF2 and AES-CBC come from aws-lc-rs, the one crypto backend of the
//! project. It must never put a passphrase, a derived key or decrypted key
//! material into an error or a log.

use std::num::NonZeroU32;

use aws_lc_rs::cipher::{
    DecryptionContext, EncryptionContext, PaddedBlockDecryptingKey, PaddedBlockEncryptingKey,
    UnboundCipherKey, AES_128, AES_192, AES_256,
};
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::pbkdf2;
use base64::Engine as _;
use pkcs8::der::Encode as _;
use pkcs8::pkcs5::pbes2::{self, Kdf, Pbkdf2Prf};
use pkcs8::pkcs5::EncryptionScheme;
use pkcs8::EncryptedPrivateKeyInfo;

use crate::inspect::encode_pem;
use crate::PkiError;

/// PBKDF2-HMAC-SHA256 iterations used when encrypting a key: the OWASP
/// recommendation for PBKDF2-HMAC-SHA256 (2023).
pub const PBKDF2_ITERATIONS: u32 = 600_000;

/// The largest iteration count accepted when decrypting. A key file is
/// trusted input, but a typo or a hostile file should not make a command
/// hang for hours.
const MAX_PBKDF2_ITERATIONS: u32 = 20_000_000;

const BEGIN_ENCRYPTED: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----";
const END_ENCRYPTED: &str = "-----END ENCRYPTED PRIVATE KEY-----";

/// Why an encrypted key could not be decrypted. Carries no key material.
#[derive(Debug)]
pub(crate) enum DecryptError {
    /// The passphrase is wrong (or the ciphertext was tampered with).
    WrongPassphrase,
    /// The document uses a scheme we do not implement, or is not a valid
    /// `EncryptedPrivateKeyInfo` at all; names what was found.
    Unsupported(String),
}

/// Whether a PEM document holds an encrypted private key: PKCS#8
/// `ENCRYPTED PRIVATE KEY`, or OpenSSL's legacy `Proc-Type: 4,ENCRYPTED`.
pub(crate) fn is_encrypted_pem(pem: &str) -> bool {
    pem.contains(BEGIN_ENCRYPTED) || pem.contains("Proc-Type: 4,ENCRYPTED")
}

/// Encrypts a PKCS#8 `PrivateKeyInfo` with PBES2: PBKDF2-HMAC-SHA256 with
/// [`PBKDF2_ITERATIONS`] iterations and a random 16-byte salt, then
/// AES-256-CBC with a random IV. Returns the `ENCRYPTED PRIVATE KEY` PEM.
pub(crate) fn encrypt_pkcs8(pkcs8_der: &[u8], passphrase: &[u8]) -> Result<String, PkiError> {
    encrypt_with_iterations(pkcs8_der, passphrase, PBKDF2_ITERATIONS)
}

fn encrypt_with_iterations(
    pkcs8_der: &[u8],
    passphrase: &[u8],
    iterations: u32,
) -> Result<String, PkiError> {
    if passphrase.is_empty() {
        return Err(PkiError::InvalidRequest(
            "the passphrase must not be empty".to_owned(),
        ));
    }
    let iterations_nz = NonZeroU32::new(iterations).ok_or(PkiError::KeyEncryption(
        "checking the PBKDF2 iteration count",
    ))?;
    let mut salt = [0u8; 16];
    let mut iv = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| PkiError::Random)?;
    aws_lc_rs::rand::fill(&mut iv).map_err(|_| PkiError::Random)?;

    let mut key = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations_nz,
        &salt,
        passphrase,
        &mut key,
    );
    let cipher = UnboundCipherKey::new(&AES_256, &key)
        .and_then(PaddedBlockEncryptingKey::cbc_pkcs7)
        .map_err(|_| PkiError::KeyEncryption("setting up AES-256-CBC"))?;
    key.fill(0);
    let mut ciphertext = pkcs8_der.to_vec();
    cipher
        .less_safe_encrypt(
            &mut ciphertext,
            EncryptionContext::Iv128(FixedLength::from(&iv)),
        )
        .map_err(|_| PkiError::KeyEncryption("encrypting with AES-256-CBC"))?;

    let params = pbes2::Parameters::pbkdf2_sha256_aes256cbc(iterations, &salt, &iv)
        .map_err(|_| PkiError::KeyEncryption("encoding the PBES2 parameters"))?;
    let info = EncryptedPrivateKeyInfo {
        encryption_algorithm: EncryptionScheme::Pbes2(params),
        encrypted_data: &ciphertext,
    };
    let der = info
        .to_der()
        .map_err(|_| PkiError::KeyEncryption("encoding the encrypted key"))?;
    Ok(encode_pem("ENCRYPTED PRIVATE KEY", &der))
}

/// Decrypts the first `ENCRYPTED PRIVATE KEY` block of `pem` and returns the
/// DER `PrivateKeyInfo` inside, after checking that it is one: with a wrong
/// passphrase, the padding check usually fails, and in the rare case it
/// passes, the result is not a valid `PrivateKeyInfo`.
pub(crate) fn decrypt_pkcs8(pem: &str, passphrase: &[u8]) -> Result<Vec<u8>, DecryptError> {
    let der = encrypted_block(pem)?;
    let info = EncryptedPrivateKeyInfo::try_from(der.as_slice()).map_err(|_| {
        DecryptError::Unsupported("an unrecognised scheme (or the file is damaged)".to_owned())
    })?;
    let params = match &info.encryption_algorithm {
        EncryptionScheme::Pbes2(params) => params,
        EncryptionScheme::Pbes1(alg) => {
            return Err(DecryptError::Unsupported(format!(
                "PBES1 ({}), an obsolete scheme",
                alg.oid()
            )))
        }
        other => {
            return Err(DecryptError::Unsupported(format!(
                "the scheme {}",
                other.oid()
            )))
        }
    };
    let (cipher_alg, iv) = match params.encryption {
        pbes2::EncryptionScheme::Aes128Cbc { iv } => (&AES_128, iv),
        pbes2::EncryptionScheme::Aes192Cbc { iv } => (&AES_192, iv),
        pbes2::EncryptionScheme::Aes256Cbc { iv } => (&AES_256, iv),
        other => {
            return Err(DecryptError::Unsupported(format!(
                "the cipher {}",
                other.oid()
            )))
        }
    };
    let key_len = params.encryption.key_size();
    let pbkdf2_params = match &params.kdf {
        Kdf::Pbkdf2(p) => p,
        Kdf::Scrypt(_) => return Err(DecryptError::Unsupported("scrypt".to_owned())),
        other => {
            return Err(DecryptError::Unsupported(format!(
                "the key derivation function {}",
                other.oid()
            )))
        }
    };
    let prf = match pbkdf2_params.prf {
        Pbkdf2Prf::HmacWithSha1 => pbkdf2::PBKDF2_HMAC_SHA1,
        Pbkdf2Prf::HmacWithSha256 => pbkdf2::PBKDF2_HMAC_SHA256,
        Pbkdf2Prf::HmacWithSha384 => pbkdf2::PBKDF2_HMAC_SHA384,
        Pbkdf2Prf::HmacWithSha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        other => {
            return Err(DecryptError::Unsupported(format!(
                "PBKDF2 with the PRF {}",
                other.oid()
            )))
        }
    };
    let iterations = NonZeroU32::new(pbkdf2_params.iteration_count)
        .filter(|n| n.get() <= MAX_PBKDF2_ITERATIONS)
        .ok_or_else(|| {
            DecryptError::Unsupported(format!(
                "PBKDF2 with {} iterations (at most {MAX_PBKDF2_ITERATIONS} are accepted)",
                pbkdf2_params.iteration_count
            ))
        })?;
    if pbkdf2_params
        .key_length
        .is_some_and(|len| usize::from(len) != key_len)
    {
        return Err(DecryptError::Unsupported(
            "a PBKDF2 key length that does not fit the cipher".to_owned(),
        ));
    }

    let mut key = vec![0u8; key_len];
    pbkdf2::derive(prf, iterations, pbkdf2_params.salt, passphrase, &mut key);
    let cipher = UnboundCipherKey::new(cipher_alg, &key)
        .and_then(PaddedBlockDecryptingKey::cbc_pkcs7)
        .map_err(|_| DecryptError::Unsupported("an unusable AES key".to_owned()))?;
    key.fill(0);
    let mut buffer = info.encrypted_data.to_vec();
    let plain_len = cipher
        .decrypt(&mut buffer, DecryptionContext::Iv128(FixedLength::from(iv)))
        .map_err(|_| DecryptError::WrongPassphrase)?
        .len();
    buffer.truncate(plain_len);
    if pkcs8::PrivateKeyInfo::try_from(buffer.as_slice()).is_err() {
        buffer.fill(0);
        return Err(DecryptError::WrongPassphrase);
    }
    Ok(buffer)
}

/// The DER inside the `ENCRYPTED PRIVATE KEY` block of `pem`.
fn encrypted_block(pem: &str) -> Result<Vec<u8>, DecryptError> {
    let Some(start) = pem.find(BEGIN_ENCRYPTED) else {
        return Err(DecryptError::Unsupported(
            "legacy OpenSSL PEM encryption (Proc-Type: 4,ENCRYPTED)".to_owned(),
        ));
    };
    let body = &pem[start + BEGIN_ENCRYPTED.len()..];
    let end = body
        .find(END_ENCRYPTED)
        .ok_or_else(|| DecryptError::Unsupported("a PEM block without its END line".to_owned()))?;
    let base64: String = body[..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(base64)
        .map_err(|_| DecryptError::Unsupported("a PEM block that is not valid base64".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real PKCS#8 key to encrypt.
    fn pkcs8() -> Vec<u8> {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map(|k| k.serialize_der())
            .unwrap_or_default()
    }

    #[test]
    fn round_trip_and_wrong_passphrase() -> Result<(), PkiError> {
        let key = pkcs8();
        assert!(!key.is_empty());
        // Few iterations keep the unit test fast; the format is the same.
        let pem = encrypt_with_iterations(&key, b"correct horse", 1000)?;
        assert!(pem.starts_with(BEGIN_ENCRYPTED), "{pem}");
        assert!(is_encrypted_pem(&pem));
        assert_eq!(decrypt_pkcs8(&pem, b"correct horse").ok(), Some(key));
        for wrong in [&b"correct hors"[..], b"Correct horse", b"x"] {
            assert!(matches!(
                decrypt_pkcs8(&pem, wrong),
                Err(DecryptError::WrongPassphrase)
            ));
        }
        Ok(())
    }

    #[test]
    fn each_encryption_uses_a_fresh_salt_and_iv() -> Result<(), PkiError> {
        let key = pkcs8();
        let a = encrypt_with_iterations(&key, b"pw", 1000)?;
        let b = encrypt_with_iterations(&key, b"pw", 1000)?;
        assert_ne!(a, b);
        Ok(())
    }

    #[test]
    fn empty_passphrase_is_refused() {
        assert!(matches!(
            encrypt_pkcs8(&pkcs8(), b""),
            Err(PkiError::InvalidRequest(_))
        ));
    }

    #[test]
    fn unsupported_and_damaged_documents_are_not_wrong_passphrases() {
        let legacy = "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
                      DEK-Info: AES-256-CBC,00\n\nAAAA\n-----END EC PRIVATE KEY-----\n";
        assert!(is_encrypted_pem(legacy));
        assert!(matches!(
            decrypt_pkcs8(legacy, b"pw"),
            Err(DecryptError::Unsupported(_))
        ));
        let garbage = format!("{BEGIN_ENCRYPTED}\nMAMCAQA=\n{END_ENCRYPTED}\n");
        assert!(matches!(
            decrypt_pkcs8(&garbage, b"pw"),
            Err(DecryptError::Unsupported(_))
        ));
        assert!(!is_encrypted_pem(
            "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n"
        ));
    }
}
