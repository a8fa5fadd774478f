/* isa/generic.h: the generic path, plain C for the architecture's baseline: 16-byte vectors
 * (SSE2 on x86-64, which every x86-64 CPU has; NEON on aarch64), built with no -m flags.
 * It runs on any CPU; it is the fallback, not a tuned path.
 *
 * Registers: 16 xmm on x86-64 (32 q on aarch64); SSE2 has no FMA, so a multiply-add is two
 * instructions and the FMA latency argument becomes the add's (3-4 cycles).
 *
 *   MR x NR  float32 4 x 8 = 4 rows x 2 xmm = 8 accumulators + 2 of B + 1 broadcast = 11 of
 *            16. float64 4 x 4, the same 4 x 2 xmm.
 *   KC, MC, NC   256, 128, 2048: modest blocks that fit any current cache hierarchy.
 */
#define KERNELS_ISA_NAME "generic"
#define VECTOR_BYTES 16
#define VL_F32 4
#define VL_F64 2
#define IOTA_F32 ((vi32){0, 1, 2, 3})
#define IOTA_F64 ((vi64){0, 1})

#define MR_F32 4
#define NR_F32 8
#define KC_F32 256
#define MC_F32 128
#define NC_F32 2048

#define MR_F64 4
#define NR_F64 4
#define KC_F64 256
#define MC_F64 128
#define NC_F64 2048

#define DIRECT_MAX_B_BYTES (128 * 1024)  /* small-size path while op(B) fits in half of L2 */
#define SWEEP_BLOCK 4                    /* sweep.h: 4 accumulators + 4 of g in 16 xmm */
