/* isa/avx2.h: the avx2 path (x86-64 with AVX2 and FMA: Intel from Haswell, AMD Zen 1-3), as
 * BLIS's config/haswell and config/zen3. Built with -mavx2 -mfma.
 *
 * Registers: 16 ymm of 32 bytes, half the avx512 path's count at half the width; two 256-bit
 * FMA units per core, latency 4 (Zen 3: 4 cycles, 2 a cycle): a tile needs >= 8 independent
 * accumulators and must leave room for B's vectors and a broadcast in the other registers.
 * Caches (Zen 3 per core: L1d 32 KiB, L2 512 KiB; L3 32 MiB shared by 8 cores; Haswell:
 * L2 256 KiB).
 *
 *   MR x NR  float32 6 x 16 = 6 rows x 2 ymm = 12 accumulators + 2 ymm of B + 1 broadcast =
 *            15 of 16 registers (BLIS haswell's sgemm tile). The avx512 path's 8 x 32 tile
 *            would need 32 ymm accumulators: spilled to the stack every k step, it ran at a
 *            thirtieth of OpenBLAS. float64 6 x 8, the same 6 x 2 ymm.
 *   KC       256: the A micro-panel (6 x 256 x 4 B = 6 KiB) and B micro-panel (16 KiB) sit
 *            in L1 together (BLIS haswell: 256).
 *   MC       144 rows (a multiple of MR): the packed A block, 144 * 256 * 4 B = 144 KiB, in a
 *            Haswell's 256 KiB L2 with room for the B micro-panels streaming past it
 *            (BLIS haswell: 144 for float32, 72 for float64 at twice the bytes).
 *   NC       4080 columns (a multiple of NR): 256 * 4080 * 4 B = 4 MiB of L3 (BLIS: 4080).
 *   DIRECT_MAX_B_BYTES  512 KiB, all of Zen 3's L2 rather than half of it, so that the MLP's
 *            first layer (784 x 128 float32 weights, 392 KiB) takes the small-size path as on
 *            avx512, and with it train_steps' zero-skipping. Measured here (KERNELS_ISA=avx2
 *            against OpenBLAS's Haswell kernel, one thread, CPU time): the batch-128 epoch
 *            1.15x the numpy set at 256 KiB, 1.39x at 512 KiB; (128,784)@(784,128) 0.85x
 *            OpenBLAS packed, 0.93x in place.
 */
#define KERNELS_ISA_NAME "avx2"
#define VECTOR_BYTES 32
#define VL_F32 8
#define VL_F64 4
#define IOTA_F32 ((vi32){0, 1, 2, 3, 4, 5, 6, 7})
#define IOTA_F64 ((vi64){0, 1, 2, 3})

#define MR_F32 6
#define NR_F32 16
#define KC_F32 256
#define MC_F32 144
#define NC_F32 4080

#define MR_F64 6
#define NR_F64 8
#define KC_F64 256
#define MC_F64 72
#define NC_F64 4080

#define DIRECT_MAX_B_BYTES (512 * 1024)  /* small-size path while op(B) fits in L2: see above */
#define SWEEP_BLOCK 4                    /* sweep.h: 4 accumulators + 4 of g + temporaries */
