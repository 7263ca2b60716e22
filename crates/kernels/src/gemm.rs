//! Matrix products on slices through the `gemm` crate (the GEMM the flex backend uses), with
//! the dimensions and strides checked against the slices before the one unsafe call.

/// A matrix view of a slice: element (i, j) at `i · row_stride + j · col_stride`.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `rows × cols` matrix.
    ///
    /// # Panics
    /// If `data` holds fewer than `rows · cols` values.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        let m = Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        };
        m.check();
        m
    }

    /// The transpose, as a view of the same values.
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            data: self.data,
        }
    }

    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
            assert!(
                last < self.data.len(),
                "a {}×{} matrix needs {} values, the slice has {}",
                self.rows,
                self.cols,
                last + 1,
                self.data.len()
            );
        }
    }
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` when `accumulate`; `dst` is row-major. `parallel`
/// lets the GEMM split the product over rayon's threads (for a single large product; leave it
/// off inside tasks that are already parallel).
///
/// # Panics
/// If the inner dimensions differ or `dst` does not hold `lhs.rows × rhs.cols` values.
pub fn matmul(dst: &mut [f32], lhs: Mat, rhs: Mat, accumulate: bool, parallel: bool) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "inner dimensions of a matrix product differ");
    assert_eq!(dst.len(), m * n, "the product needs a {m}×{n} destination");
    lhs.check();
    rhs.check();
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let s = |x: usize| x as isize;
    // SAFETY: `dst` holds m·n values at row stride n, column stride 1; `check` proved that every
    // element (i, j) of `lhs` (i < m, j < k) and of `rhs` (i < k, j < n) lies inside its slice,
    // with non-negative strides. `dst` is borrowed mutably, so it aliases neither input.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            s(n),
            accumulate,
            lhs.data.as_ptr(),
            s(lhs.col_stride),
            s(lhs.row_stride),
            rhs.data.as_ptr(),
            s(rhs.col_stride),
            s(rhs.row_stride),
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn products_of_views_match_the_definition() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.91).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let close = |x: &[f32], y: &[f32]| x.iter().zip(y).all(|(x, y)| (x - y).abs() < 1e-5);
        for parallel in [false, true] {
            let mut c = vec![0.0; m * n];
            matmul(&mut c, Mat::new(&a, m, k), Mat::new(&b, k, n), false, parallel);
            assert!(close(&c, &want));
            // (bᵀ aᵀ)ᵀ = a b, through transposed views of the same slices.
            let mut ct = vec![0.0; n * m];
            matmul(
                &mut ct,
                Mat::new(&b, k, n).t(),
                Mat::new(&a, m, k).t(),
                false,
                parallel,
            );
            let ct_t: Vec<f32> = (0..m * n).map(|i| ct[(i % n) * m + i / n]).collect();
            assert!(close(&ct_t, &want));
            // Accumulating twice doubles.
            matmul(&mut c, Mat::new(&a, m, k), Mat::new(&b, k, n), true, parallel);
            let twice: Vec<f32> = want.iter().map(|x| 2.0 * x).collect();
            assert!(close(&c, &twice));
        }
    }

    #[test]
    #[should_panic(expected = "needs 12 values")]
    fn a_short_slice_is_refused() {
        Mat::new(&[0.0; 11], 3, 4);
    }
}
