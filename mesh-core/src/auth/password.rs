//! Password hashing with argon2id at OWASP parameters (m = 19 MiB, t = 2, p = 1).
//! TODO(helper): implement.

use super::AuthError;

/// Hashes `password` into a PHC string (argon2id, m=19456 KiB, t=2, p=1, random salt).
pub fn hash(password: &str) -> Result<String, AuthError> {
    let _ = password;
    Err(AuthError::Hash("unimplemented".into()))
}

/// Checks `password` against a PHC string. `Ok(false)` for a wrong password;
/// `Err` only if the stored hash cannot be read.
pub fn verify(password: &str, phc: &str) -> Result<bool, AuthError> {
    let _ = (password, phc);
    Err(AuthError::Hash("unimplemented".into()))
}
