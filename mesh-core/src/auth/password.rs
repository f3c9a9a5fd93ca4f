//! Password hashing with argon2id at OWASP parameters (m = 19 MiB, t = 2, p = 1).
//!
//! Hashes are kept as PHC strings (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`),
//! which carry their own algorithm, parameters and salt: a hash made today
//! still verifies after the parameters are raised. The salt is 16 random
//! bytes from the operating system.
//!
//! One hash costs tens of milliseconds and 19 MiB of memory by design; the
//! service runs these functions on a blocking thread.

use argon2::password_hash::Error as PhcError;
use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};

use super::AuthError;

/// Memory cost in KiB (OWASP: 19 MiB).
pub const M_COST_KIB: u32 = 19_456;
/// Number of passes (OWASP: 2).
pub const T_COST: u32 = 2;
/// Degree of parallelism (OWASP: 1).
pub const P_COST: u32 = 1;
/// Salt length in bytes.
pub const SALT_LEN: usize = 16;

fn hasher() -> Result<Argon2<'static>, AuthError> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None)
        .map_err(|e| AuthError::Hash(format!("argon2 parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes `password` into a PHC string (argon2id, m=19456 KiB, t=2, p=1, random salt).
pub fn hash(password: &str) -> Result<String, AuthError> {
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt).map_err(|e| AuthError::Hash(format!("random salt: {e}")))?;
    let phc = hasher()?
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map_err(|e| AuthError::Hash(e.to_string()))?;
    Ok(phc.to_string())
}

/// Checks `password` against a PHC string. `Ok(false)` for a wrong password;
/// `Err` only if the stored hash cannot be read.
///
/// The parameters are taken from the stored hash, so hashes made with other
/// argon2 parameters (or argon2i/argon2d) still verify.
pub fn verify(password: &str, phc: &str) -> Result<bool, AuthError> {
    let parsed = PasswordHash::new(phc).map_err(|e| AuthError::Hash(e.to_string()))?;
    if !matches!(
        parsed.algorithm.as_str(),
        "argon2id" | "argon2i" | "argon2d"
    ) {
        return Err(AuthError::Hash(format!(
            "not an argon2 hash: {}",
            parsed.algorithm
        )));
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err(AuthError::Hash("hash has no salt or output".into()));
    }
    // The parameters come from `parsed`; the context only supplies the defaults.
    match Argon2::default().verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(PhcError::PasswordInvalid) => Ok(false),
        Err(e) => Err(AuthError::Hash(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_names_argon2id_owasp_parameters_and_verifies() {
        let started = std::time::Instant::now();
        let phc = hash("correct horse battery staple").expect("hash");
        eprintln!("one argon2id hash took {:?}", started.elapsed());
        assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
        assert!(phc.contains("$m=19456,t=2,p=1$"), "{phc}");
        let parsed = PasswordHash::new(&phc).expect("parse");
        assert_eq!(parsed.salt.map(|s| s.as_ref().len()), Some(SALT_LEN));

        assert!(verify("correct horse battery staple", &phc).expect("verify"));
        assert!(!verify("Correct horse battery staple", &phc).expect("verify wrong"));
    }

    #[test]
    fn salts_differ() {
        let a = hash("same").expect("hash a");
        let b = hash("same").expect("hash b");
        assert_ne!(a, b);
    }

    #[test]
    fn unreadable_hash_is_an_error_not_false() {
        for bad in [
            "",
            "plaintext",
            "$argon2id$v=19$m=19456,t=2,p=1$",
            "$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        ] {
            assert!(
                matches!(verify("pw", bad), Err(AuthError::Hash(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn hashes_with_other_argon2_parameters_verify() {
        // A cheap argon2id hash, as an older configuration might have made.
        let params = Params::new(64, 1, 1, None).expect("params");
        let phc = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_with_salt(b"pw", b"0123456789abcdef")
            .expect("hash")
            .to_string();
        assert!(verify("pw", &phc).expect("verify"));
        assert!(!verify("nope", &phc).expect("verify wrong"));
    }
}
