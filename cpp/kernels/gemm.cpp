// GEMM driver: packing (transposition handled here), cache blocking, threading, epilogue.
#include "layerprop/gemm.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>

#include "layerprop/eltwise.hpp"
#include "layerprop/runtime.hpp"

namespace lp::kern {
namespace generic {
#include "gemm_impl.hpp"
}
using generic::Blocking;

#ifdef LAYERPROP_HAVE_AVX2
namespace avx2 {
void ukernel_f32(int64_t, const float*, const float*, float*, int64_t, bool);
void ukernel_f64(int64_t, const double*, const double*, double*, int64_t, bool);
void small_f32(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t,
               float*, int64_t, bool);
void small_f64(bool, bool, int64_t, int64_t, int64_t, const double*, int64_t, const double*,
               int64_t, double*, int64_t, bool);
void pack_b_trans_f32(float*, const float*, int64_t, int64_t, int64_t, int64_t, int64_t);
void pack_a_rows_f32(float*, const float*, int64_t, int64_t, int64_t, int64_t);
void ukernel_rows_f32(int64_t, const float*, int64_t, const float*, float*, int64_t, bool);
void store_tile_t_f32(float*, int64_t, const float*, bool);
}  // namespace avx2
#endif
#ifdef LAYERPROP_HAVE_AVX512
namespace avx512 {
void ukernel2_f32(int64_t, const float*, const float*, float*, int64_t, bool);
void ukernel2_rows_f32(int64_t, const float*, int64_t, const float*, float*, int64_t, bool);
void ukernel_tail_f32(int64_t, const float*, const float*, float*, int64_t, bool, int);
void ukernel2_rows_ep_f32(int64_t, const float*, int64_t, const float*, float*, int64_t, bool, const float*, int, float,
                          float*, int64_t);
void ukernel_tail_ep_f32(int64_t, const float*, const float*, float*, int64_t, bool, int, const float*, int, float,
                         float*, int64_t);
void gemm_inplace_f32(bool, int64_t, int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, int64_t,
                      float*, int64_t, bool, const float*, int, float, float*, int64_t, float*, bool);
}  // namespace avx512
#endif

namespace {

template <class T>
using Ukernel = void (*)(int64_t, const T*, const T*, T*, int64_t, bool);
template <class T>
using SmallFn = void (*)(bool, bool, int64_t, int64_t, int64_t, const T*, int64_t, const T*,
                         int64_t, T*, int64_t, bool);

template <class T>
Ukernel<T> pick_ukernel() {
#ifdef LAYERPROP_HAVE_AVX2
  if (use_avx2()) {
    if constexpr (std::is_same_v<T, float>) return &avx2::ukernel_f32;
    else return &avx2::ukernel_f64;
  }
#endif
  return &generic::ukernel_generic<T>;
}
// A micro-kernel reading its 6 x kc block of A in place (row r at a + r * lda), or nullptr.
template <class T>
using UkRows = void (*)(int64_t, const T*, int64_t, const T*, T*, int64_t, bool);
template <class T>
UkRows<T> pick_ukernel_rows() {
#ifdef LAYERPROP_HAVE_AVX2
  if constexpr (std::is_same_v<T, float>)
    if (use_avx2()) return &avx2::ukernel_rows_f32;
#endif
  return nullptr;
}
// Kernels for two micro-panels at once (a 2*MR x NR tile, the MR-row kernels' bits), packed
// and in place, or nullptrs.
template <class T>
struct Pair {
  Ukernel<T> packed = nullptr;
  UkRows<T> rows = nullptr;
  // The last 1-11 rows of a packed row block, exactly those rows (the AVX2 kernel pads to 6).
  void (*tail)(int64_t, const T*, const T*, T*, int64_t, bool, int) = nullptr;
  // rows and tail with the epilogue fused into the stores: bias, act (fused_act's code), the
  // LeakyReLU slope, act_out and its stride.
  void (*rows_ep)(int64_t, const T*, int64_t, const T*, T*, int64_t, bool, const T*, int, T, T*, int64_t) = nullptr;
  void (*tail_ep)(int64_t, const T*, const T*, T*, int64_t, bool, int, const T*, int, T, T*, int64_t) = nullptr;
};
// The code of an epilogue the AVX-512 tiles apply as they store (0 Identity, 1 ReLU,
// 2 LeakyReLU), or -1: bias_act's pass over the tile instead.
template <class T>
int fused_act(const Epilogue<T>* ep) {
  if (!ep) return -1;
  return ep->act == Act::Identity ? 0 : ep->act == Act::ReLU ? 1 : ep->act == Act::LeakyReLU ? 2 : -1;
}
template <class T>
Pair<T> pick_pair() {
  Pair<T> p;
#ifdef LAYERPROP_HAVE_AVX512
  if constexpr (std::is_same_v<T, float>)
    if (use_avx512()) {
      p.packed = &avx512::ukernel2_f32;
      p.rows = &avx512::ukernel2_rows_f32;
      p.tail = &avx512::ukernel_tail_f32;
      p.rows_ep = &avx512::ukernel2_rows_ep_f32;
      p.tail_ep = &avx512::ukernel_tail_ep_f32;
    }
#endif
  return p;
}
template <class T>
SmallFn<T> pick_small() {
#ifdef LAYERPROP_HAVE_AVX2
  if (use_avx2()) {
    if constexpr (std::is_same_v<T, float>) return &avx2::small_f32;
    else return &avx2::small_f64;
  }
#endif
  return &generic::gemm_small<T>;
}

// Grow-only scratch owned by the calling thread: allocated at first use, then reused.
template <class T>
T* scratch(Buffer<T>& buf, int64_t n) {
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

// Rows [p0, p0+kc) x columns [c0, c0+n) of a row-major matrix into W-wide k-major panels
// (panel q holds columns c0 + qW.., dst[q*W*kc + k*W + j]), the last one zero-padded. Each row
// is read once, in order, and feeds every panel: for B (not transposed) and for A^T. (Panel by
// panel, each panel read one cache line from each of kc rows; the M step spent 3.5% there.)
template <int64_t W, class T>
void pack_rows_to_panels(T* dst, const T* src0, int64_t ld, int64_t p0, int64_t kc, int64_t c0, int64_t n) {
  const int64_t full = n / W * W;
  for (int64_t k = 0; k < kc; ++k) {
    const T* src = src0 + (p0 + k) * ld + c0;
    for (int64_t q = 0; q < full; q += W) std::memcpy(dst + q * kc + k * W, src + q, sizeof(T) * W);
    if (full < n) {
      T* d = dst + full * kc + k * W;
      for (int64_t j = 0; j < n - full; ++j) d[j] = src[full + j];
      for (int64_t j = n - full; j < W; ++j) d[j] = T(0);
    }
  }
}

// Pack rows [i0, i0+mc) x cols [p0, p0+kc) of op(A) into MR-row micro-panels (k-major),
// zero-padding the last panel.
template <class T>
void pack_a(T* dst, bool ta, const T* A, int64_t lda, int64_t i0, int64_t mc, int64_t p0,
            int64_t kc) {
  constexpr int64_t MR = Blocking<T>::MR;
  if (ta) {  // op(A) = A^T: row k of A holds column k of every micro-panel
    pack_rows_to_panels<MR>(dst, A, lda, p0, kc, i0, mc);
    return;
  }
  for (int64_t ip = 0; ip < mc; ip += MR) {
    const int64_t mr = std::min(MR, mc - ip);
    T* d = dst + ip * kc;
#ifdef LAYERPROP_HAVE_AVX2
    if constexpr (std::is_same_v<T, float>) {
      static const bool fast = use_avx2();
      if (mr == MR && fast) {
        avx2::pack_a_rows_f32(d, A, lda, i0 + ip, p0, kc);
        continue;
      }
    }
#endif
    for (int64_t k = 0; k < kc; ++k) {
      for (int64_t r = 0; r < mr; ++r) d[k * MR + r] = A[(i0 + ip + r) * lda + p0 + k];
      for (int64_t r = mr; r < MR; ++r) d[k * MR + r] = T(0);
    }
  }
}

// Pack rows [p0, p0+kc) x cols [j0, j0+nr) of op(B) = B^T into one NR-column micro-panel.
template <class T>
void pack_b_trans_panel(T* dst, const T* B, int64_t ldb, int64_t p0, int64_t kc, int64_t j0, int64_t nr) {
  constexpr int64_t NR = Blocking<T>::NR;
#ifdef LAYERPROP_HAVE_AVX2
  if constexpr (std::is_same_v<T, float>) {
    static const bool fast = use_avx2();
    if (fast) {
      avx2::pack_b_trans_f32(dst, B, ldb, p0, kc, j0, nr);
      return;
    }
  }
#endif
  for (int64_t j = 0; j < nr; ++j) {
    const T* src = B + (j0 + j) * ldb + p0;
    for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = src[k];
  }
  for (int64_t j = nr; j < NR; ++j)
    for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = T(0);
}

// Columns [j0, j0+n) x rows [p0, p0+kc) of op(B) into NR-column panels at dst (panel q at
// dst + q * NR * kc), the last one zero-padded: B^T one panel at a time, B by rows.
template <class T>
void pack_b_panels(T* dst, bool tb, const T* B, int64_t ldb, int64_t p0, int64_t kc, int64_t j0, int64_t n) {
  constexpr int64_t NR = Blocking<T>::NR;
  if (!tb) {
    pack_rows_to_panels<NR>(dst, B, ldb, p0, kc, j0, n);
    return;
  }
  for (int64_t q = 0; q * NR < n; ++q)
    pack_b_trans_panel(dst + q * NR * kc, B, ldb, p0, kc, j0 + q * NR, std::min(NR, n - q * NR));
}

// Whether 12 rows `stride` bytes apart spread over L1's sets (64 sets of 64-byte lines, 8 ways)
// so that no set holds more than 6 of them: a 12-row tile read in place then stays in L1
// beside the panel it is multiplied with. Rows 4 KB apart (1024 floats) all fall in one set and
// evict each other: predict on L (1024-2048-2048-1024) ran 28-35% slower with x's tiles read
// in place, and L's training step at batch 96 9% slower with W's rows read in place (swap_nt).
bool rows_spread(int64_t stride) {
  int count[64] = {};
  for (int64_t r = 0; r < 12; ++r)
    if (++count[((r * stride) >> 6) & 63] > 6) return false;
  return true;
}

std::atomic<bool> g_a_outer_on{env_switch_on("LAYERPROP_GEMM_A_OUTER")};  // "0": B's panels outside

// x @ W^T style products with A's 12-row tiles outside (gemm_rect): A not transposed, its rows
// spread over L1's sets, and the AVX-512 row kernels.
template <class T>
bool a_outer_applies(bool ta, bool ct, const Pair<T>& pair, int64_t lda) {
  return !ta && !ct && pair.rows != nullptr && rows_spread(lda * int64_t(sizeof(T))) &&
         g_a_outer_on.load(std::memory_order_relaxed);
}

// c (mr x nr) (+)= t: the edge tiles, computed into a full-size temporary first.
template <class T>
void store_part(T* __restrict c, int64_t ldc, const T* __restrict t, int64_t ldt, int64_t mr, int64_t nr,
                bool acc) {
  for (int64_t r = 0; r < mr; ++r) {
    T* __restrict cr = c + r * ldc;
    const T* __restrict tr = t + r * ldt;
    if (acc)
      for (int64_t j = 0; j < nr; ++j) cr[j] += tr[j];
    else
      for (int64_t j = 0; j < nr; ++j) cr[j] = tr[j];
  }
}

// c[j * ldc + r] (+)= t[r * ldt + j]: a tile stored transposed.
template <class T>
void store_part_t(T* __restrict c, int64_t ldc, const T* __restrict t, int64_t ldt, int64_t mr, int64_t nr,
                  bool acc) {
  for (int64_t j = 0; j < nr; ++j) {
    T* __restrict cj = c + j * ldc;
    if (acc)
      for (int64_t r = 0; r < mr; ++r) cj[r] += t[r * ldt + j];
    else
      for (int64_t r = 0; r < mr; ++r) cj[r] = t[r * ldt + j];
  }
}

// Final values of a tile: bias, then the activation into act_out.
template <class T>
inline void apply_epilogue(T* C, int64_t ldc, int64_t i0, int64_t mr, int64_t j0, int64_t nr,
                           const Epilogue<T>& ep) {
  bias_act<T>(C + i0 * ldc + j0, ldc, mr, nr, ep.bias ? ep.bias + j0 : nullptr, ep.act, ep.params,
              ep.act_out ? ep.act_out + i0 * ep.ld_act + j0 : nullptr, ep.ld_act);
}

// Tile (i, j) of C, rows x nr, from `tile(dst, ld, accumulate)`: straight into C where the
// kernel's tile is whole (`whole`), else through a temporary and store_part; then `ep`, if
// given (the last depth block's), over it.
template <class T, class Tile>
void store_tile(Tile&& tile, bool whole, T* C, int64_t ldc, int64_t i, int64_t rows, int64_t j, int64_t nr, bool acc,
                const Epilogue<T>* ep) {
  constexpr int64_t MR = Blocking<T>::MR, NR = Blocking<T>::NR;
  T* ctile = C + i * ldc + j;
  if (whole) {
    tile(ctile, ldc, acc);
  } else {
    alignas(64) T tmp[2 * MR * NR];
    tile(tmp, NR, false);
    store_part(ctile, ldc, tmp, NR, rows, nr, acc);
  }
  if (ep) apply_epilogue(C, ldc, i, rows, j, nr, *ep);
}

// Equal depth blocks (784 = 4 x 196, not 3 x 256 + 16): a thin last block would pay a full
// load and store of C per tile. Depends on K only, so results stay thread-count independent.
template <class T>
int64_t depth_block(int64_t K) {
  const int64_t kblocks = (K + Blocking<T>::KC - 1) / Blocking<T>::KC;
  return (K + kblocks - 1) / kblocks;
}

// Panels of op(B) packed once per multi-threaded product and shared by its rectangles. Each
// rectangle used to pack its own, so op(B) was packed once per row of rectangles. Now the
// block of rectangle column c at depth block p is packed by the first rectangle of that
// column that needs it, into one buffer, and read from there by the others. A rectangle that
// finds its block still being packed waits at most kSharedWaitNs, then packs a private copy:
// a descheduled packer delays nobody for long. The values packed are the same whoever packs
// them, so results do not change. Measured at 2 threads, the switch flipped in one process
// (alternating order): S's step 5.5% faster (39 of 40 pairs), M's 1.2-1.6% (27-30 of 40),
// L's 1.3% (8-10 of 12). Sharing op(A)'s panels the same way made predict at batch 1024 3%
// slower (8 of 30): a second rectangle reads them from L3, where repacking puts them in its
// own L2. So A is not shared.
template <class T>
struct SharedPanels {
  T* b = nullptr;                      // column block [j0, j1) at depth block p: b + p * b_block + j0 * kc_p
  int64_t b_block = 0;                 // elements per depth block
  std::atomic<int>* state = nullptr;   // [c * blocks + p]: 0 free, 1 being packed, 2 ready,
                                       // 3 being packed by a thread that kept others waiting
  int64_t blocks = 0;                  // depth blocks
  bool private_copies = false;         // tests: every block packed privately (the fallback)
};

constexpr int64_t kSharedWaitNs = 20000;

// The shared block behind `state` once packed (by `pack`, here or by another rectangle), or
// `priv` packed here if another rectangle is still packing it after kSharedWaitNs.
template <class T, class F>
const T* acquire_panels(std::atomic<int>& state, T* shared, T* priv, bool private_copy, F&& pack) {
  if (private_copy) {
    pack(priv);
    return priv;
  }
  int s = state.load(std::memory_order_acquire);
  if (s == 2) return shared;
  if (s == 0 && state.compare_exchange_strong(s, 1, std::memory_order_acq_rel)) {
    pack(shared);
    state.store(2, std::memory_order_release);
    return shared;
  }
  if (s == 1) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::nanoseconds(kSharedWaitNs);
    for (int spins = 0;; ++spins) {
      s = state.load(std::memory_order_acquire);
      if (s == 2) return shared;
      if (s != 1) break;
      cpu_relax();
      if ((spins & 63) == 63 && std::chrono::steady_clock::now() > until) {
        // Its packer is away: whoever needs this block from now on packs it without waiting
        // (3); the packer still publishes 2 when it is back.
        int one = 1;
        state.compare_exchange_strong(one, 3, std::memory_order_acq_rel);
        break;
      }
    }
  }
  pack(priv);
  return priv;
}

// One rectangle of C: rows [i0, i1) x columns [j0, j1), the whole depth K. The loops inside
// are BLIS's (column block jc, depth block pc, row block ic, micro-tiles), with this thread's
// own packed panels. Every C tile gets the same micro-kernel calls in the same order (the depth
// blocks depend on K only), so a tile's bits never depend on the rectangle it was part of.
// With `ukr`, full 6-row tiles read A in place instead of from a packed block (same bits).
// With `ct`, the product is C^T: tile (r, j) goes to C[j * ldc + r] and the epilogue sees C.
template <class T>
void gemm_rect(bool ta, bool tb, int64_t i0, int64_t i1, int64_t j0, int64_t j1, int64_t K,
               const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc, bool accumulate,
               const Epilogue<T>* ep, int64_t mcb, int64_t kcb, Ukernel<T> uk, UkRows<T> ukr, Pair<T> pair,
               bool ct, const PackedNT<T>* pre = nullptr, const SharedPanels<T>* sh = nullptr,
               int64_t rect_col = 0) {
  using Bk = Blocking<T>;
  constexpr int64_t MR = Bk::MR, NR = Bk::NR, KC = Bk::KC, MC = Bk::MC, NC = Bk::NC;
  static thread_local Buffer<T> abuf_store, bbuf_store;
  const bool direct = ukr != nullptr && !ta;
  // A not transposed, its rows spread over L1, the AVX-512 row kernels: A's tiles outside (below).
  const bool a_outer = a_outer_applies<T>(ta, ct, pair, lda);
  const bool share_b = sh != nullptr && !pre;
  const int64_t n_pad = (j1 - j0 + NR - 1) / NR * NR;
  // Private panels: one row block of A (slack: the AVX2 packer's last store) and one column
  // block of B (sharing: the fallback copy of the rectangle's columns).
  T* abuf = scratch(abuf_store, MC * KC + 16);
  T* bbuf_own = pre ? nullptr : scratch(bbuf_store, KC * (share_b ? n_pad : std::min(NC, n_pad)));
  // A-outer streams a depth block's panels of B past every tile of A: at most 512 KB of them
  // at a time, so that they stay in L2 (column blocks never change results).
  const int64_t nc_step =
      a_outer ? std::clamp<int64_t>((int64_t(512) << 10) / (kcb * int64_t(sizeof(T))) / NR * NR, NR, NC) : NC;
  for (int64_t jc = j0; jc < j1; jc += nc_step) {
    const int64_t nc = std::min(nc_step, j1 - jc);
    const int64_t n_jr = (nc + NR - 1) / NR;
    for (int64_t pc = 0; pc < K; pc += kcb) {
      const int64_t kc = std::min(kcb, K - pc);
      const bool acc_here = accumulate || pc > 0;
      const bool last_k = pc + kc == K;
      const int64_t p = pc / kcb;
      const T* bblock;  // the panels of columns [jc, jc + nc) at this depth block
      if (pre) {
        // op(B)'s panels were packed once (pack_nt): depth block pc of panel col starts at
        // pc * padded N + col * kc, the same values this loop would have packed.
        bblock = pre->data.data() + pc * pre->n_pad + jc * kc;
      } else if (share_b) {  // the rectangle's columns [j0, j1), packed once for all rows
        const T* whole = acquire_panels(sh->state[rect_col * sh->blocks + p],
                                        sh->b + p * sh->b_block + j0 * kc, bbuf_own,
                                        sh->private_copies, [&](T* dst) { pack_b_panels(dst, tb, B, ldb, pc, kc, j0, j1 - j0); });
        bblock = whole + (jc - j0) * kc;
      } else {
        pack_b_panels(bbuf_own, tb, B, ldb, pc, kc, jc, nc);
        bblock = bbuf_own;
      }
      for (int64_t ic = i0; ic < i1; ic += mcb) {
        const int64_t mc = std::min(mcb, i1 - ic);
        if (a_outer) {
          // Each 12-row tile of A is read in place and stays in L1 while the depth block's
          // panels of B (packed for this call or kept, in L2) stream past it, one 16-column
          // panel per tile of C; the last rows (1-11) are packed, just those. Nothing of A is
          // packed otherwise.
          // The order below (B's panel in L1, A streaming) reads A's 12 rows from L2 on every
          // panel; packing A to make that one stream cost 3.5% of predict at batch 1024. This
          // order reads one cache line of B per k from L2, which the prefetchers keep ahead.
          // Measured against onnxruntime (predict on M, 1 thread, same process): batch 256
          // 0.97x -> 1.01x, 1024 0.97x -> 1.00x; M's training step 1.4% faster (x @ W^T and
          // dz @ W). Same fma chains, so the same bits.
          // The last depth block's full tiles store through the epilogue where it is bias and
          // Identity, ReLU or LeakyReLU: no second pass over C (0.8-0.9% of predict on M).
          const int fuse = last_k ? fused_act(ep) : -1;
          for (int64_t ir = 0; ir < mc;) {
            const int64_t rows = std::min(2 * MR, mc - ir);
            const bool two = rows == 2 * MR;
            if (!two) pack_a(abuf, ta, A, lda, ic + ir, rows, pc, kc);
            const T* ad = A + (ic + ir) * lda + pc;
            for (int64_t q = 0; q < n_jr; ++q) {
              const int64_t jr = q * NR, nr = std::min(NR, nc - jr);
              const T* bq = bblock + q * NR * kc;
              auto tile = [&](T* dst, int64_t ld, bool acc) {
                if (two) pair.rows(kc, ad, lda, bq, dst, ld, acc);
                else pair.tail(kc, abuf, bq, dst, ld, acc, static_cast<int>(rows));
              };
              if (nr == NR && fuse >= 0) {
                T* ctile = C + (ic + ir) * ldc + jc + jr;
                const T* bias = ep->bias ? ep->bias + jc + jr : nullptr;
                T* ao = ep->act_out ? ep->act_out + (ic + ir) * ep->ld_act + jc + jr : nullptr;
                const T slope = fuse == 2 ? ep->params.negative_slope : T(0);
                if (two) pair.rows_ep(kc, ad, lda, bq, ctile, ldc, acc_here, bias, fuse, slope, ao, ep->ld_act);
                else pair.tail_ep(kc, abuf, bq, ctile, ldc, acc_here, static_cast<int>(rows), bias, fuse, slope, ao,
                                  ep->ld_act);
                continue;
              }
              store_tile(tile, nr == NR, C, ldc, ic + ir, rows, jc + jr, nr, acc_here, last_k ? ep : nullptr);
            }
            ir += rows;
          }
          continue;
        }
        if (!direct) pack_a(abuf, ta, A, lda, ic, mc, pc, kc);
        for (int64_t q = 0; q < n_jr; ++q) {
          const int64_t jr = q * NR, nr = std::min(NR, nc - jr);
          const T* bq = bblock + q * NR * kc;
          int64_t rows = 0;  // of this tile: MR (or fewer at the edge), or 2 MR for a pair
          // Packed once, the next panel is not in cache (the per-call packing has just written
          // it): each tile asks for its share of the next panel's lines, into L2.
          const int64_t pf_lines = pre && q + 1 < n_jr ? (NR * kc * int64_t(sizeof(T)) + 63) / 64 : 0;
          const int64_t pf_step = pf_lines ? (pf_lines * 2 * MR + mc - 1) / mc : 0;
          int64_t pf_at = 0;
          for (int64_t ir = 0; ir < mc; ir += rows) {
            for (const int64_t pf_end = std::min(pf_lines, pf_at + pf_step); pf_at < pf_end; ++pf_at)
              __builtin_prefetch(reinterpret_cast<const char*>(bq + NR * kc) + pf_at * 64, 0, 2);
            const int64_t mr = std::min(MR, mc - ir);
            // Two full micro-panels at once where a pair kernel exists: same bits per tile.
            const bool two = pair.packed != nullptr && mc - ir >= 2 * MR;
            const bool tail = !two && !ct && !direct && pair.tail != nullptr;
            rows = two ? 2 * MR : tail ? mc - ir : mr;
            const T* ap = abuf + ir * kc;
            if (direct && mr < MR) {  // a short row tile: pack just its micro-panel
              pack_a(abuf, ta, A, lda, ic + ir, mr, pc, kc);
              ap = abuf;
            }
            auto tile = [&](T* dst, int64_t ld, bool acc) {
              const T* ad = A + (ic + ir) * lda + pc;
              if (two && direct) pair.rows(kc, ad, lda, bq, dst, ld, acc);
              else if (two) pair.packed(kc, ap, bq, dst, ld, acc);
              else if (tail) pair.tail(kc, ap, bq, dst, ld, acc, static_cast<int>(rows));
              else if (direct && mr == MR) ukr(kc, ad, lda, bq, dst, ld, acc);
              else uk(kc, ap, bq, dst, ld, acc);
            };
            if (ct) {  // the epilogue runs once over the rectangle, below
              alignas(64) T tmp[2 * MR * NR];
              tile(tmp, NR, false);
              T* cdst = C + (jc + jr) * ldc + ic + ir;
              bool stored = false;
#ifdef LAYERPROP_HAVE_AVX2
              if constexpr (std::is_same_v<T, float>) {
                if (mr == MR && nr == NR) {  // ct implies the AVX2 kernels (pick_ukernel_rows)
                  avx2::store_tile_t_f32(cdst, ldc, tmp, acc_here);
                  if (two) avx2::store_tile_t_f32(cdst + MR, ldc, tmp + MR * NR, acc_here);
                  stored = true;
                }
              }
#endif
              if (!stored) store_part_t(cdst, ldc, tmp, NR, rows, nr, acc_here);
              continue;
            }
            store_tile(tile, (two || tail || mr == MR) && nr == NR, C, ldc, ic + ir, rows, jc + jr, nr, acc_here,
                       last_k ? ep : nullptr);
          }
        }
      }
    }
  }
  // C^T's tiles are 16 rows by 6 columns of C: one pass over the rectangle's rows instead.
  if (ct && ep) apply_epilogue(C, ldc, j0, j1 - j0, i0, i1 - i0, *ep);
}

// 1: shared panels (SharedPanels); 0 (LAYERPROP_GEMM_SHARED=0): each rectangle packs its own;
// 2 (tests): every rectangle packs a private copy, as when its packer is away.
std::atomic<int> g_shared_mode{env_switch_on("LAYERPROP_GEMM_SHARED") ? 1 : 0};
constexpr int64_t kSharedMaxBytes = int64_t(32) << 20;
template <class T>
void gemm_packed(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                 const T* B, int64_t ldb, T* C, int64_t ldc, bool accumulate,
                 const Epilogue<T>* ep, bool ct = false, const PackedNT<T>* pre = nullptr) {
  using Bk = Blocking<T>;
  constexpr int64_t MR = Bk::MR, NR = Bk::NR, KC = Bk::KC, MC = Bk::MC;
  const Ukernel<T> uk = pick_ukernel<T>();
  // A in place only for the swapped product (A = the weights, read where they are).
  const UkRows<T> ukr = ct ? pick_ukernel_rows<T>() : nullptr;
  const Pair<T> pair = pick_pair<T>();
  const int64_t mr_step = pair.packed ? 2 * MR : MR;
  const int64_t kcb = depth_block<T>(K);
  // Equal row blocks (512 rows: 4 x 128, not 3 x 168 + 8). Row blocking never changes results.
  const int64_t mblocks = (M + MC - 1) / MC;
  const int64_t mcb = ((M + mblocks - 1) / mblocks + mr_step - 1) / mr_step * mr_step;
  const int nt = threads_for(Work::Gemm, M * N * K);
  if (nt <= 1) {
    gemm_rect<T>(ta, tb, 0, M, 0, N, K, A, lda, B, ldb, C, ldc, accumulate, ep, mcb, kcb, uk, ukr, pair, ct, pre);
    return;
  }
  // C in rectangles, taken by the threads as they come: a grid of rs x cs rectangles, at least
  // 4 per thread where the shape allows. Rows are cut at multiples of the row kernel's height
  // (12 rows with the AVX-512 pair), so no rectangle ends in a short tile that a whole one
  // could have done. Each rectangle packs its own panels of A, and of B unless they are
  // shared (SharedPanels), so the grid is chosen to pack least: A is packed once per column
  // of rectangles, B once per row of them.
  const int64_t row_tiles = (M + mr_step - 1) / mr_step, col_tiles = (N + NR - 1) / NR;
  const int64_t want = std::min<int64_t>(int64_t(4) * nt, row_tiles * col_tiles);
  // Kept weights read in A-outer order (gemm_rect) pack nothing per rectangle: there, rows are
  // cut alone wherever that still leaves four row tiles per thread. Predict on M at batch
  // 1024, 2 threads: 0.96x -> 1.00x onnxruntime against 2 rows x 4 columns of rectangles.
  const bool rows_only = pre != nullptr && a_outer_applies<T>(ta, ct, pair, lda) && row_tiles >= 4 * nt;
  int64_t rs = 1, cs = 1;
  double best = -1;
  for (int64_t c = 1; c <= std::min(want, col_tiles); ++c) {
    const int64_t r = std::min(row_tiles, (want + c - 1) / c);
    if (r * c < std::min<int64_t>(nt, want)) continue;
    const double packed = rows_only ? double(c) : double(M) * double(c) + double(N) * double(r);
    if (best < 0 || packed < best) {
      best = packed;
      rs = r;
      cs = c;
    }
  }
  auto row_at = [&](int64_t r) { return std::min(M, (r * row_tiles / rs) * mr_step); };
  auto col_at = [&](int64_t c) { return std::min(N, (c * col_tiles / cs) * NR); };
  const int64_t mcb_rect = std::min(mcb, ((row_tiles + rs - 1) / rs) * mr_step);
  // Shared panels of op(B) (SharedPanels) where two or more rows of rectangles read them, B
  // is not kept packed already, and they fit in kSharedMaxBytes.
  const int64_t blocks = (K + kcb - 1) / kcb;
  const int64_t b_block = (N + NR - 1) / NR * NR * kcb;
  const int64_t shared_elems = blocks * b_block;
  SharedPanels<T> sh;
  std::unique_ptr<std::atomic<int>[]> states;
  const int mode = g_shared_mode.load(std::memory_order_relaxed);
  const bool share = mode != 0 && pre == nullptr && rs >= 2 &&
                     shared_elems * int64_t(sizeof(T)) <= kSharedMaxBytes;
  if (share) {
    static thread_local Buffer<T> shared_store;  // the calling thread's, grow-only
    sh.b = scratch(shared_store, shared_elems);
    sh.b_block = b_block;
    sh.blocks = blocks;
    sh.private_copies = mode == 2;
    states.reset(new std::atomic<int>[static_cast<size_t>(cs * blocks)]);
    for (int64_t i = 0; i < cs * blocks; ++i) states[i].store(0, std::memory_order_relaxed);
    sh.state = states.get();
  }
  parallel_for(rs * cs, nt, [&](int64_t item) {
    const int64_t r = item / cs, c = item % cs;
    const int64_t i0 = row_at(r), i1 = row_at(r + 1), j0 = col_at(c), j1 = col_at(c + 1);
    if (i0 < i1 && j0 < j1)
      gemm_rect<T>(ta, tb, i0, i1, j0, j1, K, A, lda, B, ldb, C, ldc, accumulate, ep, mcb_rect, kcb, uk, ukr, pair, ct, pre,
                   share ? &sh : nullptr, c);
  });
}

}  // namespace

bool swap_nt(int64_t M, int64_t N, int64_t K) {
  static const int64_t max_rows = [] {
    const char* env = std::getenv("LAYERPROP_GEMM_SWAP_ROWS");  // measurement hook
    return env ? std::atoll(env) : int64_t(128);
  }();
  // Packing W costs about 1/M of the product, the transposed stores of C about 1/K. Measured
  // against onnxruntime in one process (predict on M, 1 thread, medians of 60 pairs, 4 runs,
  // when predict packed W on every call): at batch 128 swapping gave 0.91-0.96x instead of
  // 0.84-0.86x; at 192 and 256, even. Weights kept packed (nt_packs_b) are not swapped.
  return M <= max_rows && N >= M && K >= 128;
}

namespace {
// Whether a packed x @ W^T runs as C^T = W x^T here (swap_nt, and a kernel reading W in place).
template <class T>
bool nt_runs_swapped(int64_t M, int64_t N, int64_t K) {
  // W (N x K) is read in place by rows K apart (rows_spread).
  return pick_ukernel_rows<T>() != nullptr && swap_nt(M, N, K) && rows_spread(K * int64_t(sizeof(T)));
}
}  // namespace

bool gemm_uses_direct(int64_t M, int64_t N, int64_t K) {
  // Packing pays once a packed panel is reused enough; tiny products go direct.
  return M * N * K <= int64_t(16) * 16 * 16 || M <= 4 || N <= 2 || K <= 2;
}

namespace {
std::atomic<bool> g_inplace_on{env_switch_on("LAYERPROP_GEMM_INPLACE")};  // "0": always pack
}  // namespace
void set_gemm_shared(int mode) { g_shared_mode.store(mode, std::memory_order_relaxed); }
void set_gemm_inplace(bool on) { g_inplace_on.store(on, std::memory_order_relaxed); }
void set_gemm_a_outer(bool on) { g_a_outer_on.store(on, std::memory_order_relaxed); }

// Whether gemm runs a product in place (gemm_inplace): one that is not direct (tiny), with
// K <= 128 and at most 2^18 multiply-adds, so that A and B fit in L1 and packing them buys
// nothing. B^T (a Linear's forward, x @ W^T) still needs its 16-column panels, so only those
// are packed (a few KB); A (x) is read in place, unless the swapped product (swap_nt: W read
// in place, x packed) applies, which packs less. Measured one product at a time, the switch
// flipped in one process: TN 64x64x32 4.9 -> 4.3 us, NN 32x64x64 4.8 -> 4.1 us, TN 64x16x128
// 6.3 -> 4.3 us, NT 32x10x128 3.8 -> 3.0 us; NT 16x128x128 was faster swapped (8.6 against
// 9.7 us) and NN 256x512x10 packed (54 against 58 us), hence the exclusions. One thread only:
// larger products keep the packed path and its rectangles. Same bits as the packed path
// (gemm_inplace_f32): the choice never shows in a result.
template <class T>
bool gemm_runs_inplace(bool tb, int64_t M, int64_t N, int64_t K) {
#ifdef LAYERPROP_HAVE_AVX512
  if constexpr (std::is_same_v<T, float>) {
    static const bool wide = use_avx512();
    return wide && M > 0 && N > 0 && K > 0 && K <= 128 && M * N * K <= (int64_t(1) << 18) &&
           !gemm_uses_direct(M, N, K) && !(tb && nt_runs_swapped<T>(M, N, K)) &&
           g_inplace_on.load(std::memory_order_relaxed) && threads_for(Work::Gemm, M * N * K) <= 1;
  }
#endif
  return false;
}

// Returns whether it applied `ep` too (fused into the stores: bias and a cheap activation).
template <class T>
bool gemm_inplace(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B,
                  int64_t ldb, T* C, int64_t ldc, bool accumulate, const Epilogue<T>* ep, T* colsum = nullptr,
                  bool colsum_acc = false) {
#ifdef LAYERPROP_HAVE_AVX512
  if constexpr (std::is_same_v<T, float>) {
    constexpr int64_t NR = Blocking<T>::NR;  // 16: the in-place tiles' width
    const int64_t kcb = depth_block<T>(K);   // K itself (K <= 128)
    const int act = fused_act(ep);
    const float* bias = act >= 0 ? ep->bias : nullptr;
    float* act_out = act >= 0 ? ep->act_out : nullptr;
    const float slope = act == 2 ? ep->params.negative_slope : 0.0f;
    const int64_t ld_act = act >= 0 ? ep->ld_act : 0;
    if (!tb) {
      avx512::gemm_inplace_f32(ta, M, N, K, kcb, A, lda, B, ldb, NR, C, ldc, accumulate, bias, act, slope, act_out,
                               ld_act, colsum, colsum_acc);
    } else {
      static thread_local Buffer<T> store;
      T* bp = scratch(store, (N + NR - 1) / NR * NR * K);
      pack_b_panels(bp, true, B, ldb, 0, K, 0, N);
      avx512::gemm_inplace_f32(ta, M, N, K, kcb, A, lda, bp, NR, NR * K, C, ldc, accumulate, bias, act, slope,
                               act_out, ld_act, colsum, colsum_acc);
    }
    return act >= 0;
  }
#endif
  return false;
}

template <class T>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B,
          int64_t ldb, T* C, int64_t ldc, bool accumulate, const Epilogue<T>* ep) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int64_t i = 0; i < M; ++i)
      if (!accumulate) std::fill(C + i * ldc, C + i * ldc + N, T(0));
  } else if (gemm_uses_direct(M, N, K)) {
    static const SmallFn<T> small = pick_small<T>();
    // Thin products (batch-1 inference) split their columns across threads; every output is
    // computed by the same code either way.
    parallel_range(N, Work::GemmSmall, M * N * K, [&](int64_t j0, int64_t j1) {
      small(ta, tb, M, j1 - j0, K, A, lda, tb ? B + j0 * ldb : B + j0, ldb, C + j0, ldc, accumulate);
    });
  } else if (gemm_runs_inplace<T>(tb, M, N, K)) {
    if (gemm_inplace<T>(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, accumulate, ep)) return;
  } else {
    // x @ W^T with few rows and many columns (a Linear's forward at small batch): compute
    // C^T = W x^T instead, reading W in place and packing only x. Packing W would otherwise
    // copy the whole weight matrix on every call. Same fma chains, same bits.
    if (!ta && tb && nt_runs_swapped<T>(M, N, K)) {
      gemm_packed<T>(false, true, N, M, K, B, ldb, A, lda, C, ldc, accumulate, ep, true);
      return;
    }
    gemm_packed<T>(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, accumulate, ep);
    return;
  }
  if (ep) apply_epilogue(C, ldc, 0, M, 0, N, *ep);
}

template <class T>
void gemm_tn_colsum(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                    int64_t ldc, bool accumulate, T* db, bool db_acc) {
  // In place, the column sums come from the A values the first column block's tiles load
  // anyway (one load and one add per k); otherwise a product, then colsum's pass over A.
  if (gemm_runs_inplace<T>(false, M, N, K)) {
    gemm_inplace<T>(true, false, M, N, K, A, lda, B, ldb, C, ldc, accumulate, nullptr, db, db_acc);
    return;
  }
  gemm<T>(true, false, M, N, K, A, lda, B, ldb, C, ldc, accumulate);
  colsum<T>(db, A, K, M, db_acc);
}

template <class T>
bool nt_packs_b(int64_t M, int64_t N, int64_t K) {
  if (M <= 0 || N <= 0 || K <= 0 || gemm_uses_direct(M, N, K)) return false;
  // With the AVX-512 row kernels, kept panels serve every batch (gemm_rect's A-outer order):
  // predict on M at batch 16-128 went from 0.93-0.97x onnxruntime swapped to 1.00-1.03x.
  return pick_pair<T>().rows != nullptr || !nt_runs_swapped<T>(M, N, K);
}

template <class T>
void pack_nt(PackedNT<T>& p, const T* W, int64_t ldw, int64_t N, int64_t K) {
  constexpr int64_t NR = Blocking<T>::NR;
  const int64_t kcb = depth_block<T>(K), n_pad = (N + NR - 1) / NR * NR;
  const int64_t panels = n_pad / NR;
  p.N = N;
  p.K = K;
  p.n_pad = n_pad;
  if (static_cast<int64_t>(p.data.size()) != n_pad * K) p.data.assign(static_cast<size_t>(n_pad * K), T(0));
  T* base = p.data.data();
  // Panels are independent: any thread packs any of them, the same values either way.
  parallel_range(panels * ((K + kcb - 1) / kcb), Work::EltCheap, N * K, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t pc = (u / panels) * kcb, col = (u % panels) * NR;
      const int64_t kc = std::min(kcb, K - pc);
      pack_b_trans_panel(base + pc * n_pad + col * kc, W, ldw, pc, kc, col, std::min(NR, N - col));
    }
  });
}

template <class T>
void gemm_nt_packed(int64_t M, const T* A, int64_t lda, const PackedNT<T>& B, T* C, int64_t ldc, bool accumulate,
                    const Epilogue<T>* ep) {
  if (M <= 0 || B.N <= 0) return;
  gemm_packed<T>(false, true, M, B.N, B.K, A, lda, nullptr, 0, C, ldc, accumulate, ep, false, &B);
}

template <class T>
void gemm_naive(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                const T* B, int64_t ldb, T* C, int64_t ldc, bool accumulate,
                const Epilogue<T>* ep) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      T s = 0;
      for (int64_t k = 0; k < K; ++k)
        s += (ta ? A[k * lda + i] : A[i * lda + k]) * (tb ? B[j * ldb + k] : B[k * ldb + j]);
      C[i * ldc + j] = accumulate ? C[i * ldc + j] + s : s;
    }
  if (ep) apply_epilogue(C, ldc, 0, M, 0, N, *ep);
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t,
                          const float*, int64_t, float*, int64_t, bool, const Epilogue<float>*);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, const double*, int64_t,
                           const double*, int64_t, double*, int64_t, bool,
                           const Epilogue<double>*);
template void gemm_tn_colsum<float>(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*,
                                    int64_t, bool, float*, bool);
template void gemm_tn_colsum<double>(int64_t, int64_t, int64_t, const double*, int64_t, const double*, int64_t,
                                     double*, int64_t, bool, double*, bool);
template bool nt_packs_b<float>(int64_t, int64_t, int64_t);
template bool nt_packs_b<double>(int64_t, int64_t, int64_t);
template void pack_nt<float>(PackedNT<float>&, const float*, int64_t, int64_t, int64_t);
template void pack_nt<double>(PackedNT<double>&, const double*, int64_t, int64_t, int64_t);
template void gemm_nt_packed<float>(int64_t, const float*, int64_t, const PackedNT<float>&, float*, int64_t, bool,
                                    const Epilogue<float>*);
template void gemm_nt_packed<double>(int64_t, const double*, int64_t, const PackedNT<double>&, double*, int64_t, bool,
                                     const Epilogue<double>*);
template void gemm_naive<float>(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t,
                                const float*, int64_t, float*, int64_t, bool,
                                const Epilogue<float>*);
template void gemm_naive<double>(bool, bool, int64_t, int64_t, int64_t, const double*, int64_t,
                                 const double*, int64_t, double*, int64_t, bool,
                                 const Epilogue<double>*);

}  // namespace lp::kern
