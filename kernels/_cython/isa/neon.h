/* isa/neon.h: the neon path (aarch64 with Advanced SIMD, which every aarch64 CPU has), as
 * BLIS's config/armv8a. Built with the compiler's aarch64 defaults.
 *
 * Registers: 32 q (v0-v31) of 16 bytes; FMLA by element can take A's value from a lane, so a
 * broadcast costs no register of its own. Two 128-bit FMA pipes on most cores (Cortex-A76,
 * Neoverse N1, Apple's have four), latency 4: >= 8 independent accumulators.
 * Caches vary widely (Neoverse N1: L1d 64 KiB, L2 1 MiB; Apple M1: L1d 128 KiB, L2 12 MiB
 * shared); the blocks below are BLIS armv8a's, chosen for the smaller ones.
 *
 *   MR x NR  float32 6 x 16 = 6 rows x 4 q = 24 accumulators + 4 q of B + 2 of A = 30 of 32
 *            (BLIS armv8a's sgemm tile is 8 x 12; 16 columns keep NR and NR / 2 whole vectors
 *            for the narrow kernel). float64 6 x 8, the same 6 x 4 q.
 *   KC       512: A micro-panel 12 KiB, B micro-panel 32 KiB (BLIS armv8a: 640).
 *   MC       120 rows (a multiple of MR): 120 * 512 * 4 B = 240 KiB of L2 (BLIS: 120).
 *   NC       3072 columns: 512 * 3072 * 4 B = 6 MiB (BLIS: 3072).
 * Not measured: no ARM machine was at hand. tests/c/ checks these kernels' results under
 * qemu-user.
 */
#define KERNELS_ISA_NAME "neon"
#define VECTOR_BYTES 16
#define VL_F32 4
#define VL_F64 2
#define IOTA_F32 ((vi32){0, 1, 2, 3})
#define IOTA_F64 ((vi64){0, 1})

#define MR_F32 6
#define NR_F32 16
#define KC_F32 512
#define MC_F32 120
#define NC_F32 3072

#define MR_F64 6
#define NR_F64 8
#define KC_F64 256
#define MC_F64 120
#define NC_F64 3072

#define DIRECT_MAX_B_BYTES (512 * 1024)  /* small-size path while op(B) fits in half of L2 */
#define SWEEP_BLOCK 8                    /* sweep.h: 8 accumulators + 8 of g in 32 q */
