//! Runtime selection of the CPU's vector instructions for the kernels' own loops (the GEMMs
//! choose theirs inside the `gemm` crate). The workspace is compiled for the x86-64 baseline
//! (SSE2), so that its binaries run on every x86-64 CPU; `wide!` runs a function compiled again
//! for AVX2 (and FMA, though the loops write no fused multiply–adds, so both versions round
//! alike) where the CPU has them.

/// `body(args…)`, with `body` (an `#[inline(always)]` function, so that it is compiled into
/// each version) built a second time for AVX2 and FMA, which runs where the CPU has them:
/// `wide!(body(a: &[f32], n: usize))` calls `body(a, n)` with the variables `a` and `n`.
macro_rules! wide {
    ($body:ident($($arg:ident: $ty:ty),* $(,)?)) => {{
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        fn avx2_fma($($arg: $ty),*) {
            $body($($arg),*)
        }
        #[cfg(target_arch = "x86_64")]
        if $crate::simd::has_avx2_fma() {
            // SAFETY: `avx2_fma` needs AVX2 and FMA, which the CPU has.
            #[allow(unsafe_code)]
            unsafe {
                avx2_fma($($arg),*)
            }
        } else {
            $body($($arg),*)
        }
        #[cfg(not(target_arch = "x86_64"))]
        $body($($arg),*)
    }};
}

pub(crate) use wide;

/// Whether the CPU has AVX2 and FMA (detected once, then cached by the standard library).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(test)]
mod tests {
    #[inline(always)]
    fn scale(values: &mut [f32], by: f32) {
        for v in values {
            *v *= by;
        }
    }

    /// The version the CPU selects computes what the plain function does, bit for bit.
    #[test]
    fn the_selected_version_computes_the_function() {
        let mut wide: Vec<f32> = (0..100).map(|k| k as f32 * 0.37).collect();
        let mut plain = wide.clone();
        let by = 1.7;
        let slice = wide.as_mut_slice();
        super::wide!(scale(slice: &mut [f32], by: f32));
        scale(&mut plain, by);
        assert_eq!(wide, plain);
        assert_ne!(wide[1], 0.37, "the call ran");
    }
}
