//! Matrix multiplication: the register-blocked Cranelift kernel and the call to the GEMM
//! kernel (see [`crate::codegen::MatmulKernel`]).

use super::*;

/// The shape of one register tile of the Cranelift matmul kernel.
#[derive(Clone, Copy)]
pub(super) struct Tile {
    /// Inner dimension.
    k: usize,
    /// Columns of `b` and `c` (row stride in elements).
    n: usize,
    /// Rows of the tile.
    rows: usize,
    /// `f32x4` column groups.
    nvec: usize,
    /// Single columns after the vectors.
    nscalar: usize,
}

impl<'a> Lowerer<'a> {
    /// `c[m,n] = a[m,k] x b[k,n]`, `a` and `b` with (row, column) element strides `sa`, `sb`
    /// (row-major unless a transpose was folded, which only the GEMM path does); `ws` is the
    /// node's planned scratch, the GEMM's packing workspace.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn matmul(
        &mut self,
        a: Loc,
        sa: (usize, usize),
        b: Loc,
        sb: (usize, usize),
        c: Loc,
        (m, k, n): (usize, usize, usize),
        ws: Loc,
    ) -> Result<(), LowerError> {
        match self.matmul {
            MatmulKernel::Gemm => {
                let args = [
                    self.iconst(m as i64),
                    self.iconst(k as i64),
                    self.iconst(n as i64),
                    self.addr(a, None),
                    self.iconst(sa.0 as i64),
                    self.iconst(sa.1 as i64),
                    self.addr(b, None),
                    self.iconst(sb.0 as i64),
                    self.iconst(sb.1 as i64),
                    self.addr(c, None),
                    self.iconst(0),
                    self.iconst(self.threads as i64),
                    self.addr(ws, None),
                ];
                self.call(Kernel::Gemm, &args)?;
            }
            MatmulKernel::Cranelift => self.matmul_cranelift(a, b, c, m, k, n),
        }
        Ok(())
    }

    /// The planned scratch space of node `id` (in the arena).
    pub(super) fn scratch(&self, plan: &Plan, id: NodeId) -> Loc {
        Loc {
            slot: self.bases.len() - 1,
            offset: plan.scratch.get(&id).copied().unwrap_or(0),
        }
    }

    /// The planned scratch space of node `id`, if the plan gave it any.
    pub(super) fn planned_scratch(&self, plan: &Plan, id: NodeId) -> Option<Loc> {
        plan.scratch.get(&id).map(|&offset| Loc {
            slot: self.bases.len() - 1,
            offset,
        })
    }

    /// Register-blocked kernel: tiles of 4 rows x 8 columns (8 `f32x4` accumulators) run
    /// over `k` in registers, loading 2 vectors of `b` and broadcasting 4 scalars of `a` per
    /// step; leftover columns (vectors, then single columns) and rows form smaller tiles.
    pub(super) fn matmul_cranelift(
        &mut self,
        a: Loc,
        b: Loc,
        c: Loc,
        m: usize,
        k: usize,
        n: usize,
    ) {
        const ROWS: usize = 4;
        const VECS: usize = 2;
        let geo = Tile {
            k,
            n,
            rows: ROWS,
            nvec: VECS,
            nscalar: 0,
        };
        let pa = self.addr(a, None);
        let pb = self.addr(b, None);
        let pc = self.addr(c, None);
        let row_tiles = m / ROWS;
        let rows_block = |lw: &mut Self, i0: Value, rows: usize| {
            let ra = lw.b.ins().imul_imm_s(i0, (k * 4) as i64);
            let row_a = lw.b.ins().iadd(pa, ra);
            let rc = lw.b.ins().imul_imm_s(i0, (n * 4) as i64);
            let row_c = lw.b.ins().iadd(pc, rc);
            let col_tiles = n / (VECS * LANES);
            lw.for_range(col_tiles, vec![], &mut |lw, t, _| {
                let col = lw.b.ins().imul_imm_s(t, (VECS * LANES * 4) as i64);
                lw.matmul_tile(row_a, pb, row_c, col, Tile { rows, ..geo });
                vec![]
            });
            let done = col_tiles * VECS * LANES;
            let (nvec, nscalar) = ((n - done) / LANES, (n - done) % LANES);
            if nvec + nscalar > 0 {
                let col = lw.iconst((done * 4) as i64);
                lw.matmul_tile(
                    row_a,
                    pb,
                    row_c,
                    col,
                    Tile {
                        rows,
                        nvec,
                        nscalar,
                        ..geo
                    },
                );
            }
        };
        self.for_range(row_tiles, vec![], &mut |lw, t, _| {
            let i0 = lw.b.ins().imul_imm_s(t, ROWS as i64);
            rows_block(lw, i0, ROWS);
            vec![]
        });
        for i in row_tiles * ROWS..m {
            let i0 = self.iconst(i as i64);
            rows_block(self, i0, 1);
        }
    }

    /// One tile of `c`: `t.rows` rows from `row_a`/`row_c`, `t.nvec` vectors then
    /// `t.nscalar` single columns from byte column offset `col`, accumulated over `k`.
    pub(super) fn matmul_tile(
        &mut self,
        row_a: Value,
        pb: Value,
        row_c: Value,
        col: Value,
        t: Tile,
    ) {
        let width = t.nvec + t.nscalar;
        let zv = self.fconst(0.0, true);
        let zs = self.fconst(0.0, false);
        let init: Vec<Value> = (0..t.rows)
            .flat_map(|_| (0..width).map(|q| if q < t.nvec { zv } else { zs }))
            .collect();
        let bcol = self.b.ins().iadd(pb, col);
        let col_off = |q: usize| {
            if q < t.nvec {
                q * LANES * 4
            } else {
                (t.nvec * LANES + q - t.nvec) * 4
            }
        };
        let acc = self.for_range(t.k, init, &mut |lw, kk, acc| {
            let oa = lw.b.ins().imul_imm_s(kk, 4);
            let pa = lw.b.ins().iadd(row_a, oa);
            let ob = lw.b.ins().imul_imm_s(kk, (t.n * 4) as i64);
            let rb = lw.b.ins().iadd(bcol, ob);
            let bv: Vec<Value> = (0..width)
                .map(|q| {
                    let ty = if q < t.nvec { types::F32X4 } else { types::F32 };
                    lw.load(ty, rb, col_off(q) as i64)
                })
                .collect();
            let mut out = Vec::with_capacity(acc.len());
            for r in 0..t.rows {
                let s = lw.load(types::F32, pa, (r * t.k * 4) as i64);
                let sv = if t.nvec > 0 {
                    lw.b.ins().splat(types::F32X4, s)
                } else {
                    s
                };
                for (q, &b) in bv.iter().enumerate() {
                    let x = if q < t.nvec { sv } else { s };
                    out.push(lw.mul_add(x, b, acc[r * width + q]));
                }
            }
            out
        });
        let pc = self.b.ins().iadd(row_c, col);
        for r in 0..t.rows {
            for q in 0..width {
                let off = r * t.n * 4 + col_off(q);
                self.store(acc[r * width + q], pc, off as i64);
            }
        }
    }
}
