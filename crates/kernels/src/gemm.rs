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

    /// A `rows × cols` matrix whose rows start `row_stride` values apart (a block of columns
    /// of a wider row-major matrix).
    ///
    /// # Panics
    /// If `data` is too short for the last row.
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        let m = Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        };
        m.check();
        m
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
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

/// `dst = lhs · rhs`, or `dst += lhs · rhs` when `accumulate`; `dst` holds the rows of the
/// product `dst_row_stride` values apart (`rhs.cols` for a row-major matrix of its own).
/// `parallel` lets the GEMM split the product over rayon's threads (for a single large product;
/// leave it off inside tasks that are already parallel).
///
/// # Panics
/// If the inner dimensions differ or `dst` is too short for the product's last row.
pub fn matmul(dst: &mut [f32], dst_row_stride: usize, lhs: Mat, rhs: Mat, accumulate: bool, parallel: bool) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "inner dimensions of a matrix product differ");
    assert!(dst_row_stride >= n, "rows of the destination overlap");
    if m > 0 && n > 0 {
        let needed = (m - 1) * dst_row_stride + n;
        assert!(
            dst.len() >= needed,
            "the {m}×{n} product needs {needed} values, the slice has {}",
            dst.len()
        );
    }
    lhs.check();
    rhs.check();
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_row_stride).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let s = |x: usize| x as isize;
    // SAFETY: element (i, j) of the product (i < m, j < n) is written at i·dst_row_stride + j <
    // (m − 1)·dst_row_stride + n ≤ dst.len() (asserted above); `check` proved that every element
    // (i, j) of `lhs` (i < m, j < k) and of `rhs` (i < k, j < n) lies inside its slice, with
    // non-negative strides. `dst` is borrowed mutably, so it aliases neither input.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            s(dst_row_stride),
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
            matmul(&mut c, n, Mat::new(&a, m, k), Mat::new(&b, k, n), false, parallel);
            assert!(close(&c, &want));
            // (bᵀ aᵀ)ᵀ = a b, through transposed views of the same slices.
            let mut ct = vec![0.0; n * m];
            matmul(
                &mut ct,
                m,
                Mat::new(&b, k, n).t(),
                Mat::new(&a, m, k).t(),
                false,
                parallel,
            );
            let ct_t: Vec<f32> = (0..m * n).map(|i| ct[(i % n) * m + i / n]).collect();
            assert!(close(&ct_t, &want));
            // Accumulating twice doubles.
            matmul(&mut c, n, Mat::new(&a, m, k), Mat::new(&b, k, n), true, parallel);
            let twice: Vec<f32> = want.iter().map(|x| 2.0 * x).collect();
            assert!(close(&c, &twice));
            // Columns 1..3 of the product, from a column block of b, into a wider destination.
            let mut wide = vec![7.0; m * n];
            let block = Mat::strided(&b[1..], k, 2, n);
            matmul(&mut wide[1..], n, Mat::new(&a, m, k), block, false, parallel);
            for i in 0..m {
                assert_eq!(wide[i * n], 7.0);
                assert!(close(&wide[i * n + 1..i * n + 3], &want[i * n + 1..i * n + 3]));
            }
        }
    }

    #[test]
    #[should_panic(expected = "needs 12 values")]
    fn a_short_slice_is_refused() {
        Mat::new(&[0.0; 11], 3, 4);
    }
}
