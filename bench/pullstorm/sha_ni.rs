//! SHA-256's compression function for whole 64-byte blocks, one message at a time or two at
//! once. On x86_64 with SHA-NI the two-message form runs both messages' rounds side by side:
//! `sha256rnds2` takes about twice as long to deliver its result as the core needs to issue the
//! next one, so a second, independent message fills that gap (1.7× the bytes per second of one
//! message on this machine's EPYC; one message alone runs at the `sha2` crate's speed). Without
//! SHA-NI both forms fall back to `sha2::compress256`, one message after the other.

/// SHA-256's state before the first block.
pub const INITIAL_STATE: [u32; 8] = [0x6a09_e667, 0xbb67_ae85, 0x3c6e_f372, 0xa54f_f53a, 0x510e_527f, 0x9b05_688c, 0x1f83_d9ab, 0x5be0_cd19];

/// Whether `compress_pair` really hashes two messages in one pass.
pub fn pairs_help() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        ni::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Folds `blocks` (a multiple of 64 bytes) into `state`.
pub fn compress(state: &mut [u32; 8], blocks: &[u8]) {
    debug_assert_eq!(blocks.len() % 64, 0);
    #[cfg(target_arch = "x86_64")]
    if ni::available() {
        // SAFETY: the CPU has every feature `ni::compress` is compiled for.
        unsafe { ni::compress(state, blocks) };
        return;
    }
    portable(state, blocks);
}

/// Folds `a_blocks` into `a_state` and `b_blocks` into `b_state`; both the same whole number of
/// 64-byte blocks.
pub fn compress_pair(a_state: &mut [u32; 8], a_blocks: &[u8], b_state: &mut [u32; 8], b_blocks: &[u8]) {
    debug_assert!(a_blocks.len() == b_blocks.len() && a_blocks.len() % 64 == 0);
    #[cfg(target_arch = "x86_64")]
    if ni::available() {
        // SAFETY: as in `compress`.
        unsafe { ni::compress_pair(a_state, a_blocks, b_state, b_blocks) };
        return;
    }
    portable(a_state, a_blocks);
    portable(b_state, b_blocks);
}

fn portable(state: &mut [u32; 8], blocks: &[u8]) {
    use sha2::digest::generic_array::GenericArray;
    for block in blocks.chunks_exact(64) {
        sha2::compress256(state, std::slice::from_ref(GenericArray::from_slice(block)));
    }
}

#[cfg(target_arch = "x86_64")]
mod ni {
    use std::arch::x86_64::{
        __m128i, _mm_add_epi32, _mm_alignr_epi8, _mm_blend_epi16, _mm_loadu_si128, _mm_set_epi64x, _mm_sha256msg1_epu32, _mm_sha256msg2_epu32, _mm_sha256rnds2_epu32, _mm_shuffle_epi32,
        _mm_shuffle_epi8, _mm_storeu_si128,
    };

    /// The round constants, four per group of rounds.
    const K: [u32; 64] = [
        0x428a_2f98, 0x7137_4491, 0xb5c0_fbcf, 0xe9b5_dba5, 0x3956_c25b, 0x59f1_11f1, 0x923f_82a4, 0xab1c_5ed5, 0xd807_aa98, 0x1283_5b01, 0x2431_85be, 0x550c_7dc3, 0x72be_5d74, 0x80de_b1fe,
        0x9bdc_06a7, 0xc19b_f174, 0xe49b_69c1, 0xefbe_4786, 0x0fc1_9dc6, 0x240c_a1cc, 0x2de9_2c6f, 0x4a74_84aa, 0x5cb0_a9dc, 0x76f9_88da, 0x983e_5152, 0xa831_c66d, 0xb003_27c8, 0xbf59_7fc7,
        0xc6e0_0bf3, 0xd5a7_9147, 0x06ca_6351, 0x1429_2967, 0x27b7_0a85, 0x2e1b_2138, 0x4d2c_6dfc, 0x5338_0d13, 0x650a_7354, 0x766a_0abb, 0x81c2_c92e, 0x9272_2c85, 0xa2bf_e8a1, 0xa81a_664b,
        0xc24b_8b70, 0xc76c_51a3, 0xd192_e819, 0xd699_0624, 0xf40e_3585, 0x106a_a070, 0x19a4_c116, 0x1e37_6c08, 0x2748_774c, 0x34b0_bcb5, 0x391c_0cb3, 0x4ed8_aa4a, 0x5b9c_ca4f, 0x682e_6ff3,
        0x748f_82ee, 0x78a5_636f, 0x84c8_7814, 0x8cc7_0208, 0x90be_fffa, 0xa450_6ceb, 0xbef9_a3f7, 0xc671_78f2,
    ];

    pub fn available() -> bool {
        // std caches the detection; this is a load and a test after the first call.
        is_x86_feature_detected!("sha") && is_x86_feature_detected!("sse4.1") && is_x86_feature_detected!("ssse3")
    }

    /// The state as the rounds instruction wants it: words (a, b, e, f) and (c, d, g, h).
    #[derive(Clone, Copy)]
    struct Lanes {
        abef: __m128i,
        cdgh: __m128i,
    }

    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    unsafe fn load_state(state: &[u32; 8]) -> Lanes {
        let abcd = _mm_shuffle_epi32(_mm_loadu_si128(state.as_ptr().cast()), 0xB1);
        let efgh = _mm_shuffle_epi32(_mm_loadu_si128(state.as_ptr().add(4).cast()), 0x1B);
        Lanes { abef: _mm_alignr_epi8(abcd, efgh, 8), cdgh: _mm_blend_epi16(efgh, abcd, 0xF0) }
    }

    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    unsafe fn store_state(lanes: Lanes, state: &mut [u32; 8]) {
        let feba = _mm_shuffle_epi32(lanes.abef, 0x1B);
        let dchg = _mm_shuffle_epi32(lanes.cdgh, 0xB1);
        _mm_storeu_si128(state.as_mut_ptr().cast(), _mm_blend_epi16(feba, dchg, 0xF0));
        _mm_storeu_si128(state.as_mut_ptr().add(4).cast(), _mm_alignr_epi8(dchg, feba, 8));
    }

    /// Message words `4 * group ..` of `block`, big-endian.
    #[inline(always)]
    unsafe fn message_words(block: *const u8, group: usize) -> __m128i {
        let big_endian = _mm_set_epi64x(0x0c0d_0e0f_0809_0a0b, 0x0405_0607_0001_0203);
        _mm_shuffle_epi8(_mm_loadu_si128(block.add(16 * group).cast()), big_endian)
    }

    /// Schedule words `4 * group ..` from the four groups before.
    #[inline(always)]
    unsafe fn scheduled_words(w: &[__m128i; 16], group: usize) -> __m128i {
        let partial = _mm_sha256msg1_epu32(w[group - 4], w[group - 3]);
        let partial = _mm_add_epi32(partial, _mm_alignr_epi8(w[group - 1], w[group - 2], 4));
        _mm_sha256msg2_epu32(partial, w[group - 1])
    }

    /// Four rounds.
    #[inline(always)]
    unsafe fn four_rounds(lanes: &mut Lanes, words: __m128i, group: usize) {
        let input = _mm_add_epi32(words, _mm_loadu_si128(K.as_ptr().add(4 * group).cast()));
        lanes.cdgh = _mm_sha256rnds2_epu32(lanes.cdgh, lanes.abef, input);
        lanes.abef = _mm_sha256rnds2_epu32(lanes.abef, lanes.cdgh, _mm_shuffle_epi32(input, 0x0E));
    }

    #[inline(always)]
    unsafe fn add_lanes(lanes: &mut Lanes, before: Lanes) {
        lanes.abef = _mm_add_epi32(lanes.abef, before.abef);
        lanes.cdgh = _mm_add_epi32(lanes.cdgh, before.cdgh);
    }

    /// # Safety
    /// The CPU has SHA-NI, SSSE3 and SSE4.1; `blocks` is whole 64-byte blocks.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub unsafe fn compress(state: &mut [u32; 8], blocks: &[u8]) {
        let mut lanes = load_state(state);
        for block in blocks.chunks_exact(64) {
            let before = lanes;
            let mut w = [_mm_set_epi64x(0, 0); 16];
            for group in 0..16 {
                w[group] = if group < 4 { message_words(block.as_ptr(), group) } else { scheduled_words(&w, group) };
                four_rounds(&mut lanes, w[group], group);
            }
            add_lanes(&mut lanes, before);
        }
        store_state(lanes, state);
    }

    /// # Safety
    /// As `compress`; both messages the same number of blocks.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub unsafe fn compress_pair(a_state: &mut [u32; 8], a_blocks: &[u8], b_state: &mut [u32; 8], b_blocks: &[u8]) {
        let (mut a, mut b) = (load_state(a_state), load_state(b_state));
        for (a_block, b_block) in a_blocks.chunks_exact(64).zip(b_blocks.chunks_exact(64)) {
            let (a_before, b_before) = (a, b);
            let mut aw = [_mm_set_epi64x(0, 0); 16];
            let mut bw = aw;
            // Interleaved group by group, so each message's rounds run while the other's wait.
            for group in 0..16 {
                aw[group] = if group < 4 { message_words(a_block.as_ptr(), group) } else { scheduled_words(&aw, group) };
                bw[group] = if group < 4 { message_words(b_block.as_ptr(), group) } else { scheduled_words(&bw, group) };
                four_rounds(&mut a, aw[group], group);
                four_rounds(&mut b, bw[group], group);
            }
            add_lanes(&mut a, a_before);
            add_lanes(&mut b, b_before);
        }
        store_state(a, a_state);
        store_state(b, b_state);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `len` bytes of a fixed pseudo-random sequence (an LCG's high bits).
    pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                (x >> 33) as u8
            })
            .collect()
    }

    #[test]
    fn one_and_two_messages_match_the_portable_function() {
        for blocks in [1usize, 2, 7, 64] {
            let (a, b) = (noise(64 * blocks, blocks as u64), noise(64 * blocks, 1000 + blocks as u64));
            let (mut want_a, mut want_b) = (INITIAL_STATE, INITIAL_STATE);
            portable(&mut want_a, &a);
            portable(&mut want_b, &b);
            let mut one = INITIAL_STATE;
            compress(&mut one, &a);
            assert_eq!(one, want_a, "{blocks} blocks alone");
            let (mut pa, mut pb) = (INITIAL_STATE, INITIAL_STATE);
            compress_pair(&mut pa, &a, &mut pb, &b);
            assert_eq!((pa, pb), (want_a, want_b), "{blocks} blocks in a pair");
        }
    }
}
