// mk_trace.cuh -- the timing trace (P.trace != NULL): consumer thread 0 of every block stamps %globaltimer at the
// phase boundaries below; `luce-bench kernel trace` turns the stamps into per-phase times. Tracing adds a block
// barrier before each "done" point so the stamp covers the whole block; the untraced kernel is unchanged.
#pragma once
#include "mk_ring.cuh"

namespace mk {

// Points of layer l: TR_L * l + k. Work items stamp their points as they pass them (a block with several items keeps
// its last item's stamps); attention layers reuse points 4 and 5 around o_proj.
enum TracePoint {
    TR_X_READY = 0,      // P1: x loaded and normalised
    TR_PROJ_DONE = 1,    // P1: in_proj / qkv rows written
    TR_MIX_DONE = 2,     // P2: the block's mixer items finished
    TR_MIX_SYNC = 3,     // P2: mixer barrier passed (attention layers have none: stamped after their items)
    TR_ITEM_IN = 4,      // GDN item: inputs polled and convolved
    TR_ITEM_SS = 5,      // GDN item: the head's sums of squares arrived
    TR_MLP_X_READY = 6,  // P4: x loaded and normalised
    TR_GATE_UP_DONE = 7, // P4: gate/up done
    TR_DOWN_DONE = 8,    // P4: down_proj partial added
    TR_MLP_SYNC = 9,     // P4: barrier passed
    TR_ATT_IN = 10,      // attention item: q, k, v polled and normalised
    TR_O_READY = 11,     // P3: o_proj input loaded
    TR_L = 12
};
// Attention layers reuse points 4 and 5 for o_proj done and the o_proj barrier passed.
constexpr int TR_O_DONE = TR_ITEM_IN, TR_O_SYNC = TR_ITEM_SS;
// Per-step points after the layers: step start, LM x ready, LM head done, LM barrier passed, and (stamped between the
// second and the third) LM rows streamed: the screened head's bounds taken, before its rows are recomputed (the full
// head stamps it with LM head done).
constexpr int TR_STEP = NL * TR_L, TR_LM_STREAMED = TR_STEP + 4, TR_POINTS = TR_STEP + 5;

__device__ __forceinline__ void trace_pt(const Ctx& c, const LuceMkParams& P, int s, int k) {
    if (P.trace && c.tid == 0) P.trace[((long long)s * TR_POINTS + k) * c.G + c.b] = global_ns();
}
// A "done" point: every consumer warp of the block has finished the phase.
__device__ __forceinline__ void trace_done(const Ctx& c, const LuceMkParams& P, int s, int k) {
    if (P.trace) cbar();
    trace_pt(c, P, s, k);
}

}  // namespace mk
