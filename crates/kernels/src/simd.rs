//! Runtime selection of the CPU's vector instructions for the kernels' own loops (the GEMMs
//! choose theirs inside the `gemm` crate). The workspace is compiled for the x86-64 baseline
//! (SSE2), so that its binaries run on every x86-64 CPU; [`wide!`](crate::wide) runs a function
//! compiled again with AVX2 and FMA where the CPU has them.

/// `body(args…)`, with `body` (an `#[inline(always)]` function, so that it is compiled into
/// each version) built a second time for AVX2 and FMA, which runs where the CPU has them:
/// `wide!(body(a: &[f32], n: usize))` calls `body(a, n)` with the variables `a` and `n`;
/// `wide!(body(a: &[f32]) -> f32)` returns its value.
#[macro_export]
#[doc(hidden)]
macro_rules! wide {
    ($body:ident($($arg:ident: $ty:ty),* $(,)?)) => {
        $crate::wide!($body($($arg: $ty),*) -> ())
    };
    ($body:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty) => {{
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        fn avx2_fma($($arg: $ty),*) -> $ret {
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

/// Whether the CPU has AVX2 and FMA (detected once, then cached by the standard library).
#[cfg(target_arch = "x86_64")]
#[doc(hidden)]
pub fn has_avx2_fma() -> bool {
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

    #[test]
    fn both_versions_compute_the_function() {
        let mut values: Vec<f32> = (0..100).map(|k| k as f32).collect();
        let by = 0.5;
        let slice = values.as_mut_slice();
        crate::wide!(scale(slice: &mut [f32], by: f32));
        scale(slice, 2.0);
        assert!(values.iter().enumerate().all(|(k, &v)| v == k as f32));
    }
}
