//! Runtime selection of the CPU's vector instructions for the kernels' own loops (the GEMMs
//! choose theirs inside the `gemm` crate). The workspace is compiled for the x86-64 baseline
//! (SSE2), so that its binaries run on every x86-64 CPU; `wide!` runs a function compiled again
//! for AVX2 (and FMA, though the loops write no fused multiply–adds, so both versions round
//! alike: a test runs every kernel both ways and compares the bits) where the CPU has them.

/// `body(args…)`, with `body` (an `#[inline(always)]` function, so that it is compiled into
/// each version) built a second time for AVX2 and FMA, which runs where the CPU has them:
/// `wide!(body(a: &[f32], n: usize))` calls `body(a, n)` with the variables `a` and `n`. A
/// generic body names its type parameters first: `wide!(<F: Fn(f32) -> f32> body(f: &F))`.
macro_rules! wide {
    ($body:ident($($arg:ident: $ty:ty),* $(,)?)) => {
        $crate::simd::wide!(<> $body($($arg: $ty),*))
    };
    (<$($g:ident: $bound:path),*> $body:ident($($arg:ident: $ty:ty),* $(,)?)) => {{
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        fn avx2_fma<$($g: $bound),*>($($arg: $ty),*) {
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
    #[cfg(test)]
    if tests::BASELINE_ONLY.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Makes every kernel take its baseline version (tests only). Other tests running meanwhile
    /// then take it too, which changes none of their values if the test below holds.
    pub(super) static BASELINE_ONLY: AtomicBool = AtomicBool::new(false);

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

    /// Every kernel built through `wide!` or the elementwise maps (and the dropout mask), run once in its AVX2 + FMA
    /// version and once in its baseline (SSE2) version: the values agree bit for bit (no fused
    /// multiply–adds, the same order of every sum), so results do not depend on the CPU. The
    /// shapes leave remainders after every vector width.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn every_kernel_computes_the_same_bits_in_both_versions() {
        use crate::attention::{AttentionSpec, attention, attention_backward};
        use crate::layer_norm::{LayerNormSpec, modulated_layer_norm, modulated_layer_norm_backward};
        use crate::linear::{LinearSpec, linear, linear_backward};
        use crate::norm::{GroupNormSpec, Layout, group_norm, group_norm_backward};
        use crate::patches::Patches;
        use crate::{gelu, silu, winograd};

        if !super::has_avx2_fma() {
            println!("this CPU has no AVX2 + FMA: both calls take the baseline version");
        }
        let values = |n: usize, seed: f32| -> Vec<f32> {
            (0..n).map(|k| ((k as f32 + 1.0) * seed).sin() * 3.0).collect()
        };
        let run = || {
            let mut out: Vec<Vec<f32>> = Vec::new();
            let (x, g) = (values(1003, 0.37), values(1003, 0.91));
            out.extend([silu::silu(&x), silu::silu_backward(&x, &g)]);
            out.extend([gelu::gelu_tanh(&x), gelu::gelu_tanh_backward(&x, &g)]);
            out.push(crate::dropout::keep_mask(1003, 0.7, 99));
            let mut average = values(1003, 0.17);
            crate::ema::ema_update(&mut average, &x, 0.999, 0.001);
            out.push(average);
            for (beta_1, t) in [(0.9, 3), (0.2, 1)] {
                let (mut p, mut m, mut v) = (values(1003, 0.13), values(1003, 0.21), values(1003, 0.43));
                v.iter_mut().for_each(|v| *v = v.abs());
                let step = crate::adamw::AdamWStep::new(t, beta_1, 0.99, 1e-8, 0.1, 1e-2);
                crate::adamw::adamw_step(&mut p, &g, &mut m, &mut v, &step);
                out.extend([p, m, v]);
            }
            let l = Layout {
                batch: 2,
                channels: 8,
                positions: 37,
            };
            let (gamma, beta) = (values(8, 1.3), values(8, 1.7));
            for silu in [false, true] {
                let spec = GroupNormSpec {
                    groups: 4,
                    epsilon: 1e-5,
                    silu,
                };
                let (x, dy) = (values(2 * 8 * 37, 0.29), values(2 * 8 * 37, 0.53));
                out.push(group_norm(&x, &gamma, &beta, l, spec));
                let (dx, dgamma, dbeta) = group_norm_backward(&x, &gamma, &beta, &dy, l, spec);
                out.extend([dx, dgamma, dbeta]);
            }
            let s = LayerNormSpec {
                batch: 2,
                tokens: 5,
                features: 37,
                epsilon: 1e-6,
            };
            let (x, shift, scale, dy) = (
                values(370, 0.41),
                values(74, 0.7),
                values(74, 1.1),
                values(370, 0.23),
            );
            out.push(modulated_layer_norm(&x, &shift, &scale, &s));
            let (dx, dshift, dscale) = modulated_layer_norm_backward(&x, &scale, &dy, &s);
            out.extend([dx, dshift, dscale]);
            let s = AttentionSpec {
                batch: 2,
                queries: 7,
                keys: 19,
                heads: 2,
                head_dim: 5,
            };
            let (q, k, v) = (
                values(2 * 7 * 10, 0.31),
                values(2 * 19 * 10, 0.67),
                values(2 * 19 * 10, 0.83),
            );
            let (o, lse) = attention(&q, &k, &v, &s);
            let (dq, dk, dv) = attention_backward(&q, &k, &v, &o, &lse, &values(o.len(), 0.19), &s);
            out.extend([o, lse, dq, dk, dv]);
            let s = LinearSpec {
                rows: 300,
                inputs: 7,
                outputs: 13,
            };
            let (x, w, b, dy) = (
                values(2100, 0.11),
                values(91, 0.47),
                values(13, 0.9),
                values(3900, 0.61),
            );
            out.push(linear(&x, &w, &b, &s));
            let (dx, dw, db) = linear_backward(&x, &w, &dy, &s);
            out.extend([dx, dw, db]);
            for size in [[9, 8], [3, 3]] {
                let p = Patches::new([2, 16, size[0], size[1]], [3, 3], [1, 1], [(1, 1), (1, 1)]).unwrap();
                let (x, w, bias) = (
                    values(2 * 16 * 72, 0.13),
                    values(17 * 16 * 9, 0.07),
                    values(17, 0.5),
                );
                let dy = values(2 * 17 * size[0] * size[1], 0.37);
                out.push(winograd::conv2d(&x[..2 * 16 * size[0] * size[1]], &w, &bias, &p));
                out.push(winograd::conv2d_input_grad(&w, &dy, &p, 17));
                out.push(winograd::conv2d_weight_grad(
                    &x[..2 * 16 * size[0] * size[1]],
                    &dy,
                    &p,
                    17,
                ));
            }
            out.into_iter()
                .map(|v| v.into_iter().map(f32::to_bits).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        };
        let wide = run();
        BASELINE_ONLY.store(true, Ordering::Relaxed);
        let plain = run();
        BASELINE_ONLY.store(false, Ordering::Relaxed);
        for (k, (a, b)) in wide.iter().zip(&plain).enumerate() {
            assert_eq!(a, b, "output {k} differs between the versions");
        }
    }
}
