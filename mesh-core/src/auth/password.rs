//! Password hashing with argon2id at OWASP parameters (m = 19 MiB, t = 2, p = 1).
//!
//! Hashes are kept as PHC strings (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`),
//! which carry their own algorithm, parameters and salt: a hash made today
//! still verifies after the parameters are raised. The salt is 16 random
//! bytes from the operating system.
//!
//! One hash costs tens of milliseconds and 19 MiB of memory by design; the
//! service runs these functions on a blocking thread.

use std::sync::Mutex;

use argon2::password_hash::phc::{Output, ParamsString, Salt};
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};

use super::AuthError;
use crate::Failure;

/// Memory cost in KiB (OWASP: 19 MiB).
pub const M_COST_KIB: u32 = 19_456;
/// Number of passes (OWASP: 2).
pub const T_COST: u32 = 2;
/// Degree of parallelism (OWASP: 1).
pub const P_COST: u32 = 1;
/// Salt length in bytes.
pub const SALT_LEN: usize = 16;
/// The most memory a stored hash may ask for (1 GiB): a damaged or hostile
/// record must not make the server allocate without bound.
const MAX_M_COST_KIB: u32 = 1 << 20;
/// Output length in bytes (argon2's default).
const OUTPUT_LEN: usize = 32;

fn params() -> Result<Params, AuthError> {
    Params::new(M_COST_KIB, T_COST, P_COST, Some(OUTPUT_LEN))
        .map_err(|e| AuthError::Hash(Failure::caused_by("argon2 parameters", e)))
}

/// Working memory reused from one hash to the next.
///
/// argon2 allocates its 19 MiB of blocks per hash and frees them after.
/// glibc's allocator then raises its mmap threshold to that size, so the
/// next blocks come from a heap arena that is rarely given back: measured
/// from outside, a server held 370 MiB after 50 sign-ups. Keeping a few
/// working blocks and handing them from hash to hash holds the memory at
/// `MEMORY_SLOTS` × 19 MiB whatever the number of logins. Each hash writes
/// every block before it reads it, so a reused block needs no clearing.
static MEMORY: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());

/// How many working blocks are kept: one per hashing thread.
fn memory_slots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs argon2 with `params` into `out`, on kept working memory when the
/// parameters fit the default cost (larger ones, from an old configuration,
/// get memory of their own for this one hash).
fn derive(
    algorithm: Algorithm,
    version: Version,
    params: Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), AuthError> {
    let needed = params.block_count();
    let kept_size = M_COST_KIB as usize;
    let mut blocks = if needed <= kept_size {
        let taken = MEMORY.lock().unwrap_or_else(|p| p.into_inner()).pop();
        taken.unwrap_or_else(|| vec![Block::new(); kept_size])
    } else {
        vec![Block::new(); needed]
    };
    let result = Argon2::new(algorithm, version, params).hash_password_into_with_memory(
        password,
        salt,
        out,
        &mut blocks[..needed],
    );
    if blocks.len() == kept_size {
        let mut kept = MEMORY.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < memory_slots() {
            kept.push(blocks);
        }
    }
    result.map_err(|e| AuthError::Hash(Failure::caused_by("", e)))
}

/// Hashes `password` into a PHC string (argon2id, m=19456 KiB, t=2, p=1, random salt).
pub fn hash(password: &str) -> Result<String, AuthError> {
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt)
        .map_err(|e| AuthError::Hash(Failure::caused_by("random salt", e)))?;
    let params = params()?;
    let params_string =
        ParamsString::try_from(&params).map_err(|e| AuthError::Hash(Failure::caused_by("", e)))?;
    let mut out = [0u8; OUTPUT_LEN];
    derive(
        Algorithm::Argon2id,
        Version::V0x13,
        params,
        password.as_bytes(),
        &salt,
        &mut out,
    )?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: params_string,
        salt: Some(Salt::new(&salt).map_err(|e| AuthError::Hash(Failure::caused_by("", e)))?),
        hash: Some(Output::new(&out).map_err(|e| AuthError::Hash(Failure::caused_by("", e)))?),
    };
    Ok(phc.to_string())
}

/// Checks `password` against a PHC string. `Ok(false)` for a wrong password;
/// `Err` only if the stored hash cannot be read.
///
/// The parameters are taken from the stored hash, so hashes made with other
/// argon2 parameters (or argon2i/argon2d) still verify.
pub fn verify(password: &str, phc: &str) -> Result<bool, AuthError> {
    let parsed = PasswordHash::new(phc).map_err(|e| AuthError::Hash(Failure::caused_by("", e)))?;
    let algorithm = Algorithm::try_from(parsed.algorithm.as_str())
        .map_err(|_| AuthError::Hash(format!("not an argon2 hash: {}", parsed.algorithm).into()))?;
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return Err(AuthError::Hash("hash has no salt or output".into()));
    };
    let version = match parsed.version {
        Some(v) => Version::try_from(v).map_err(|e| AuthError::Hash(Failure::caused_by("", e)))?,
        None => Version::default(),
    };
    // The output length comes from the stored hash too.
    let params =
        Params::try_from(&parsed).map_err(|e| AuthError::Hash(Failure::caused_by("", e)))?;
    if params.m_cost() > MAX_M_COST_KIB {
        return Err(AuthError::Hash(
            format!(
                "stored hash asks for {} KiB of memory, more than the {MAX_M_COST_KIB} KiB allowed",
                params.m_cost()
            )
            .into(),
        ));
    }
    let mut out = vec![0u8; expected.len()];
    derive(
        algorithm,
        version,
        params,
        password.as_bytes(),
        salt,
        &mut out,
    )?;
    let computed = Output::new(&out).map_err(|e| AuthError::Hash(Failure::caused_by("", e)))?;
    // `Output`'s equality is constant-time.
    Ok(&computed == expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::{PasswordHasher, PasswordVerifier};

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
            "$argon2id$v=19$m=4294967295,t=2,p=1$MDEyMzQ1Njc4OWFiY2RlZg$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGg",
        ] {
            assert!(
                matches!(verify("pw", bad), Err(AuthError::Hash(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn hashes_match_the_argon2_crates_own() {
        // The same password, salt and parameters through argon2's own
        // allocating path give the same PHC string, and each verifies the other's.
        let phc = hash("pw").expect("hash");
        let parsed = PasswordHash::new(&phc).expect("parse");
        let salt = parsed.salt.expect("salt");
        let theirs = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            params().expect("params"),
        )
        .hash_password_with_salt(b"pw", &salt)
        .expect("hash")
        .to_string();
        assert_eq!(phc, theirs);
        assert!(Argon2::default().verify_password(b"pw", &parsed).is_ok());
    }

    #[test]
    fn working_memory_is_kept_for_reuse_and_bounded() {
        for _ in 0..3 {
            hash("pw").expect("hash");
        }
        let kept = MEMORY.lock().expect("lock");
        assert!(
            !kept.is_empty() && kept.len() <= memory_slots(),
            "{}",
            kept.len()
        );
        assert!(kept.iter().all(|b| b.len() == M_COST_KIB as usize));
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
