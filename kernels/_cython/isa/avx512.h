/* isa/avx512.h: the avx512 path (x86-64 with AVX-512 F/BW/DQ/VL and FMA), as BLIS's
 * config/skx and config/zen4. Built with -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma.
 *
 * Registers: 32 zmm of 64 bytes. Zen 4 retires one 512-bit FMA per cycle per core (two
 * 256-bit pipes), Intel's server cores two, with a latency of 4: a tile needs >= 8
 * independent accumulators, and has room for up to ~28 beside B's vectors.
 * Caches (Zen 4 per core: L1d 32 KiB, L2 1 MiB; L3 32 MiB shared).
 *
 *   MR x NR  float32 8 x 32 = 8 rows x 2 zmm = 16 accumulators, + 2 zmm of B (+ broadcasts
 *            folded into the FMAs) = 18 of 32 registers. Each k step does 2 vector loads of B
 *            and 8 broadcasts of A for 16 FMAs, so it is FMA-bound. float64 8 x 16, the same
 *            8 x 2 zmm. MR = 8 divides every batch size the MLP uses, NR = 32 its widths 128
 *            and 64 (only the 10-wide output and 784 = 24 * 32 + 16 take the edge path).
 *   KC       512 (float32): the B micro-panel (512 * 32 * 4 B = 64 KiB) does not stay in L1
 *            and need not: the kernel consumes 160 B per 16 FMA cycles (10 B/cycle) while L2
 *            refills L1 at 64 B/cycle. A deep KC amortises the C tile's loads and stores.
 *            Measured (Zen 4, 1 thread, 2048^3, vs OpenBLAS): KC 128 -> 0.80x, 256 -> 0.91x,
 *            512 -> 0.99x. float64: 256 (256 * 16 * 8 B = 32 KiB).
 *   MC       128 rows: the packed A block, 128 * 512 * 4 B = 256 KiB, a quarter of L2.
 *   NC       4096 columns: the packed B block, 512 * 4096 * 4 B = 8 MiB of the 32 MiB L3.
 */
#define KERNELS_ISA_NAME "avx512"
#define VECTOR_BYTES 64
#define VL_F32 16
#define VL_F64 8
#define IOTA_F32 ((vi32){0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15})
#define IOTA_F64 ((vi64){0, 1, 2, 3, 4, 5, 6, 7})

#define MR_F32 8
#define NR_F32 32
#define KC_F32 512
#define MC_F32 128
#define NC_F32 4096

#define MR_F64 8
#define NR_F64 16
#define KC_F64 256
#define MC_F64 128
#define NC_F64 2048

#define DIRECT_MAX_B_BYTES (512 * 1024)  /* small-size path while op(B) fits in half of L2 */
#define SWEEP_BLOCK 8                    /* sweep.h: 8 accumulators + 8 of g in 32 zmm */
