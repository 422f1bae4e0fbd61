//! A small seeded 64-bit hash for storage keys (bucket ids, per-key fingerprints).
//!
//! Not cryptographic; seeded with a per-process random value so slot positions of keyed limits
//! cannot be predicted from outside. Cheap: a multiply-rotate per 8 bytes and a final mix
//! (the request path hashes one key per keyed limit).

const K: u64 = 0x9E37_79B9_7F4A_7C15;

pub fn hash(seed: u64, domain: u64, bytes: &[u8]) -> u64 {
    let mut h = seed ^ domain.wrapping_mul(K) ^ (bytes.len() as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(31);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(w) ^ 0xff).wrapping_mul(K).rotate_left(31);
    }
    fmix64(h)
}

/// MurmurHash3's finaliser: every input bit affects every output bit.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn seed_domain_length_and_content_all_change_the_hash() {
        let base = hash(1, 2, b"client-42");
        assert_ne!(base, hash(9, 2, b"client-42"));
        assert_ne!(base, hash(1, 3, b"client-42"));
        assert_ne!(base, hash(1, 2, b"client-43"));
        assert_ne!(hash(1, 2, b"ab"), hash(1, 2, b"ab\0"));
        assert_eq!(base, hash(1, 2, b"client-42"));
    }

    #[test]
    fn spreads_sequential_keys_evenly_over_slots() {
        let slots = 64u64;
        let mut counts = vec![0u32; slots as usize];
        for i in 0..64_000u32 {
            counts[(hash(7, 0, format!("attacker-{i}").as_bytes()) % slots) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().copied(), counts.iter().max().copied());
        assert!(min > Some(800) && max < Some(1200), "{min:?}..{max:?}");
    }
}
