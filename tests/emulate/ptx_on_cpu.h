// The PTX the tensor-core kernels use, as warp collectives on the CPU threads of cuda_on_cpu.h:
// ldmatrix (.x4, .x4.trans, m8n8 b16), mma.sync m16n8k16 row.col f32.{f16,bf16}, cp.async
// (16-byte .cg copies with src-size zero fill, commit_group, wait_group), and the cluster
// primitives of core/cluster.cuh (barrier.cluster, mapa + st / ld.shared::cluster,
// %cluster_ctarank). Each model is written
// from the PTX ISA's own definitions (9.7.14.5.8 "Matrix Fragments for mma.m16n8k16 with floating
// point type", 9.7.14.5.15 "ldmatrix", 9.7.9.25 "cp.async" / commit_group / wait_group), NOT
// from core/mma.cuh, so that the kernels' fragment recipes are checked, not repeated. The
// drivers' self-tests pin each model to hand-computed results.
//
// How the kernels reach it: tests/emulate/run.sh copies core/mma.cuh, core/cp_async.cuh and
// the kernels' headers into the build directory, renaming each PTX wrapper's definition
// (`void ldmatrix_x4(` -> `void ldmatrix_x4_ptx(`, ...) so that the calls resolve to the mmm::
// functions below; everything else in those headers (load_a_frag, the swizzles, pack2, the
// pipelines) is compiled as written. The shadow headers in tests/emulate/shadow stand in for
// cuda_runtime.h / cuda_fp16.h / cuda_bf16.h.
//
// Shared-memory addresses: __cvta_generic_to_shared(p) hands out a 32-bit handle (index of the
// base pointer in a per-thread table << 20 | offset), so `smem_addr(tile) + byte offset`
// arithmetic works as on the GPU for offsets below 1 MB and decodes back to a host pointer.
//
// cp.async modes (emu::cp_async_lazy, chosen at run time):
//   eager  a copy lands when it is issued: a stage overwritten while other warps still read it
//          (a missing barrier before the refill) changes what they read;
//   lazy   the destination is poisoned (0xff: NaN in fp16/bf16/fp32) when the copy is issued
//          and the data lands only when a wait_group retires its group: reading a stage before
//          the wait that covers it, or reading another thread's chunk without the barrier after
//          that thread's wait, reads NaN (or the previous tile) instead of the data.
// Both modes check: 16-byte alignment of both addresses, src-size in [0, 16]; wait_group<N>
// leaves at most N of the thread's groups pending; copies issued but never committed are never
// waited for (they land at neither wait nor exit in lazy mode); a thread that exits with copies
// uncommitted or in flight is an error; every thread of a block must commit the same number of
// groups (the kernels' stated invariant that keeps wait_group counts aligned across threads).
#pragma once
#include <deque>
#include <string>

#include "cuda_on_cpu.h"

// Under ThreadSanitizer (run.sh with MMM_EMULATE_SANITIZE=thread) the shared-memory side of each
// ldmatrix and cp.async is reported as one 16-byte read / write by the lane that names the
// address, at the instruction: cp.async's copy lands through library calls that GCC's
// instrumentation does not always see, and its write counts from issue (until the wait and a
// barrier, nobody else may touch the destination).
#if defined(__SANITIZE_THREAD__)
extern "C" void __tsan_read_range(void* addr, unsigned long size);
extern "C" void __tsan_write_range(void* addr, unsigned long size);
#define MMM_EMU_TSAN_READ(p, n) __tsan_read_range(const_cast<void*>(static_cast<const void*>(p)), n)
#define MMM_EMU_TSAN_WRITE(p, n) __tsan_write_range(p, n)
#else
#define MMM_EMU_TSAN_READ(p, n) ((void)0)
#define MMM_EMU_TSAN_WRITE(p, n) ((void)0)
#endif

namespace emu {

// ---- shared-memory address handles ------------------------------------------------------------
inline size_t cvta_shared(const void* p) {
  const Untraced untraced;  // the handle table is the emulator's
  const auto* c = static_cast<const unsigned char*>(p);
  std::vector<const unsigned char*>& shared_bases = self().shared_bases;
  for (size_t i = 0; i < shared_bases.size(); ++i)
    if (shared_bases[i] == c) return i << 20;
  if (shared_bases.size() >= 4096) fail("__cvta_generic_to_shared: more than 4096 distinct shared pointers");
  shared_bases.push_back(c);
  return (shared_bases.size() - 1) << 20;
}
inline unsigned char* shared_ptr(uint32_t a) {
  const Untraced untraced;
  const std::vector<const unsigned char*>& shared_bases = self().shared_bases;
  if ((a >> 20) >= shared_bases.size()) fail("a shared-memory address that no __cvta_generic_to_shared produced");
  return const_cast<unsigned char*>(shared_bases[a >> 20]) + (a & 0xfffffu);
}
// p must be in this launch's dynamic shared memory, or in a static __shared__ array, or at least
// not partly in the dynamic one; a null/garbage address would crash or be caught by ASan anyway.
inline void check_shared(const void* p, size_t bytes, const char* what) {
  const auto* c = static_cast<const unsigned char*>(p);
  const ThreadState& me = self();
  for (int i = 1; i < me.shared_range_count; ++i)  // range 0 is the dynamic shared memory
    if (reinterpret_cast<uintptr_t>(c) >= me.shared_begin[i] && reinterpret_cast<uintptr_t>(c) + bytes <= me.shared_end[i])
      return;
  const auto* base = static_cast<const unsigned char*>(smem);
  if (base && c >= base - 4096 && c < base + smem_bytes + 4096 && (c < base || c + bytes > base + smem_bytes)) {
    char msg[160];
    std::snprintf(msg, sizeof msg, "%s: %zu bytes at offset %td of %zu bytes of dynamic shared memory", what, bytes,
                  c - base, smem_bytes);
    fail(msg);
  }
}

enum : uint32_t { kOpLdsm = 1, kOpLdsmTrans = 2, kOpMmaF16 = 3, kOpMmaBF16 = 4 };

// ---- shared-memory bank conflicts ---------------------------------------------------------------
// Shared memory is 32 banks of 4 bytes, served in 128-byte wavefronts. Eight 16-byte accesses (an
// ldmatrix matrix's 8 rows; a quarter warp of cp.async stores) take one wavefront when they lie
// in 8 distinct 16-byte bank groups ((address / 16) mod 8, the address relative to a 128-byte
// aligned base, as the emulation's shared memory is and the kernels' swizzles assume); equal
// addresses are one broadcast. Every extra wavefront is a bank conflict; the kernels' swizzles
// and pitches claim none, and the drivers check that.
struct BankCount {
  std::atomic<uint64_t> accesses{0}, wavefronts{0};  // relaxed: statistics order nothing, also not under TSan
  void add(const uintptr_t (&addr)[8]) {  // one quarter warp's 16-byte accesses (memory_counts.h's model)
    static constexpr bool kAll[8] = {true, true, true, true, true, true, true, true};
    uint64_t parts = 0;
    const uint64_t worst = shared_wavefronts(addr, kAll, 8, 16, &parts);
    accesses.fetch_add(1, std::memory_order_relaxed);
    wavefronts.fetch_add(worst, std::memory_order_relaxed);
    if constexpr (counting_accesses) launch_ptx_wavefronts.fetch_add(worst, std::memory_order_relaxed);
  }
};
inline BankCount ldmatrix_banks, cp_async_banks;
// cp.async groups not counted: their lanes issued different numbers of copies (see ptx_block_end).
inline std::atomic<uint64_t> cp_async_uneven_groups{0};

// The counts at one moment; a driver takes one before a launch and subtracts it from one after.
struct BankTally {
  uint64_t ldmatrix = 0, ldmatrix_wavefronts = 0, cp_async = 0, cp_async_wavefronts = 0, uneven = 0;
  static BankTally now() {
    return {ldmatrix_banks.accesses.load(), ldmatrix_banks.wavefronts.load(), cp_async_banks.accesses.load(),
            cp_async_banks.wavefronts.load(), cp_async_uneven_groups.load()};
  }
  BankTally operator-(const BankTally& o) const {
    return {ldmatrix - o.ldmatrix, ldmatrix_wavefronts - o.ldmatrix_wavefronts, cp_async - o.cp_async,
            cp_async_wavefronts - o.cp_async_wavefronts, uneven - o.uneven};
  }
  uint64_t ldmatrix_conflicts() const { return ldmatrix_wavefronts - ldmatrix; }
  uint64_t cp_async_conflicts() const { return cp_async_wavefronts - cp_async; }
  bool conflict_free() const { return ldmatrix_conflicts() == 0 && cp_async_conflicts() == 0; }
  std::string summary() const {
    char s[160];
    std::snprintf(s, sizeof s, "ldmatrix %llu (%llu conflicts), cp.async %llu (%llu conflicts, %llu uneven groups)",
                  (unsigned long long)ldmatrix, (unsigned long long)ldmatrix_conflicts(), (unsigned long long)cp_async,
                  (unsigned long long)cp_async_conflicts(), (unsigned long long)uneven);
    return s;
  }
};

// ---- ldmatrix.sync.aligned.m8n8.x4{.trans}.shared.b16 -----------------------------------------
// PTX ISA: threads 8j..8j+7 supply the row addresses of matrix j (rows 0..7, 16 contiguous
// bytes each, 16-byte aligned). Destination register j holds matrix j. Without .trans, thread l
// holds row l/4, elements 2(l%4) (low half) and 2(l%4)+1 (high half); with .trans the matrix is
// read column-major: thread l holds elements (2(l%4), l/4) and (2(l%4)+1, l/4) of the stored matrix.
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row, bool trans) {
  const Untraced untraced;  // counted as ldmatrix / cp.async, not as plain accesses
  if (reinterpret_cast<uintptr_t>(row) % 16) fail("ldmatrix: row address not 16-byte aligned");
  check_shared(row, 16, "ldmatrix row");
  MMM_EMU_TSAN_READ(row, 16);
  LaneSlot s;
  s.op = trans ? kOpLdsmTrans : kOpLdsm;
  s.ptr = row;
  const WarpSlots lanes = warp_exchange(s);
  const int l = int(threadIdx.x % 32);
  if (l == 0)
    for (int j = 0; j < 4; ++j) {
      uintptr_t rows[8];
      for (int i = 0; i < 8; ++i) rows[i] = reinterpret_cast<uintptr_t>(lanes[8 * j + i].ptr);
      ldmatrix_banks.add(rows);
    }
  auto elem = [&](int matrix, int mrow, int mcol) {  // element (mrow, mcol) of matrix j, as stored
    uint16_t v;
    std::memcpy(&v, static_cast<const unsigned char*>(lanes[8 * matrix + mrow].ptr) + 2 * mcol, 2);
    return uint32_t(v);
  };
  const TsanIgnore blind;  // the rows' reads count as their lanes' (MMM_EMU_TSAN_READ above)
  for (int j = 0; j < 4; ++j) {
    if (!trans) r[j] = elem(j, l / 4, 2 * (l % 4)) | elem(j, l / 4, 2 * (l % 4) + 1) << 16;
    else r[j] = elem(j, 2 * (l % 4), l / 4) | elem(j, 2 * (l % 4) + 1, l / 4) << 16;
  }
}

// ---- mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 ---------------------------
// PTX ISA fragments, groupID g = l >> 2, threadID_in_group t = l % 4:
//   A (16x16) a0..a7, two per .b32 register (a_{2r} low half):
//     row = g for i in {0, 1, 4, 5}, else g + 8;  col = 2t + (i & 1) + 8 * (i >= 4)
//   B (16x8, K x N) b0..b3, two per register:  row (k) = 2t + (i & 1) + 8 * (i >= 2);  col (n) = g
//   C, D (16x8 f32) c0..c3:  row = g + 8 * (i >= 2);  col = 2t + (i & 1)
// The tables below invert these maps (built from the formulas, checked to be bijections).
struct MmaMaps {
  uint8_t a_lane[16][16], a_elem[16][16], b_lane[16][8], b_elem[16][8];
  MmaMaps() {
    bool seen_a[16][16] = {}, seen_b[16][8] = {};
    for (int l = 0; l < 32; ++l) {
      const int g = l >> 2, t = l % 4;
      for (int i = 0; i < 8; ++i) {
        const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8, col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
        if (seen_a[row][col]) fail("mma model: A map is not a bijection");
        seen_a[row][col] = true;
        a_lane[row][col] = uint8_t(l);
        a_elem[row][col] = uint8_t(i);
      }
      for (int i = 0; i < 4; ++i) {
        const int k = 2 * t + (i & 1) + (i >= 2 ? 8 : 0), n = g;
        if (seen_b[k][n]) fail("mma model: B map is not a bijection");
        seen_b[k][n] = true;
        b_lane[k][n] = uint8_t(l);
        b_elem[k][n] = uint8_t(i);
      }
    }
  }
};
inline const MmaMaps& mma_maps() {
  static const MmaMaps m;
  return m;
}

template <bool kBf16>
inline float b16_to_float(uint32_t bits) {
  if constexpr (kBf16) return mmm::to_float(mmm::BFloat16{uint16_t(bits)});
  else return mmm::to_float(mmm::Half{uint16_t(bits)});
}

// d = A·B + c for the warp; each lane gets its four D elements. Products of two fp16/bf16 values
// are exact in fp32; the sum is fp32 in k order (the hardware's order and rounding are
// unspecified, so a kernel must not depend on them).
template <bool kBf16>
inline void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (counting_accesses)
    if (threadIdx.x % 32 == 0) ++launch_mmas;
  const Untraced untraced;  // registers only; the exchange slots are the emulator's
  LaneSlot s;
  s.op = kBf16 ? kOpMmaBF16 : kOpMmaF16;
  for (int i = 0; i < 4; ++i) s.w[i] = a[i];
  s.w[4] = b[0];
  s.w[5] = b[1];
  for (int i = 0; i < 4; ++i) std::memcpy(&s.w[6 + i], &d[i], 4);
  const WarpSlots lanes = warp_exchange(s);
  const MmaMaps& m = mma_maps();
  auto A = [&](int row, int col) {
    const int i = m.a_elem[row][col];
    return b16_to_float<kBf16>(lanes[m.a_lane[row][col]].w[i / 2] >> (16 * (i % 2)));
  };
  auto B = [&](int k, int n) {
    const int i = m.b_elem[k][n];
    return b16_to_float<kBf16>(lanes[m.b_lane[k][n]].w[4 + i / 2] >> (16 * (i % 2)));
  };
  const int l = int(threadIdx.x % 32), g = l >> 2, t = l % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
    float acc;
    std::memcpy(&acc, &lanes[l].w[6 + i], 4);  // c_i of this lane is its own d_i input
    for (int k = 0; k < 16; ++k) acc = std::fma(A(row, k), B(k, col), acc);
    d[i] = acc;
  }
}

// ---- cp.async ----------------------------------------------------------------------------------
inline bool cp_async_lazy = false;  // each thread's copies (CpState) are in its ThreadState
inline uint64_t total_copies = 0;
inline std::mutex stats_mutex;

inline void cp_land(const CpCopy& c) {
  if (c.src_bytes) std::memcpy(c.dst, c.src, size_t(c.src_bytes));
  std::memset(c.dst + c.src_bytes, 0, size_t(16 - c.src_bytes));
}
// cp.async.cg.shared.global [dst], [src], 16, src_bytes;
inline void cp_async_16(void* dst, const void* src, int src_bytes) {
  const Untraced untraced;
  if (reinterpret_cast<uintptr_t>(dst) % 16) fail("cp.async: shared address not 16-byte aligned");
  if (src_bytes < 0 || src_bytes > 16) fail("cp.async: src-size outside [0, 16]");
  if (src_bytes > 0 && reinterpret_cast<uintptr_t>(src) % 16) fail("cp.async: global address not 16-byte aligned");
  check_shared(dst, 16, "cp.async destination");
  MMM_EMU_TSAN_WRITE(dst, 16);
  const CpCopy c{static_cast<unsigned char*>(dst), static_cast<const unsigned char*>(src), src_bytes};
  if (cp_async_lazy) std::memset(c.dst, 0xff, 16);
  else cp_land(c);
  CpState& cp = self().cp;
  cp.open.push_back(c);
  ++cp.copies;
}
inline void cp_async_commit() {
  const Untraced untraced;
  CpState& cp = self().cp;
  cp.group_sizes.push_back(cp.open.size());
  for (const CpCopy& c : cp.open) cp.dsts.push_back(reinterpret_cast<uintptr_t>(c.dst));
  cp.pending.push_back(std::move(cp.open));
  cp.open.clear();
  ++cp.commits;
}
template <int N>
inline void cp_async_wait() {
  const Untraced untraced;
  static_assert(N >= 0, "wait_group N >= 0");
  CpState& cp = self().cp;
  while (cp.pending.size() > size_t(N)) {
    if (cp_async_lazy)
      for (const CpCopy& c : cp.pending.front()) cp_land(c);
    cp.pending.pop_front();
  }
  if (cp.pending.size() > size_t(N)) fail("cp.async.wait_group: more than N groups left pending");
}

inline void ptx_thread_begin() {
  CpState& cp = self().cp;
  cp.open.clear();
  cp.pending.clear();
  cp.commits = cp.copies = 0;
  cp.group_sizes.clear();
  cp.dsts.clear();
  self().shared_bases.clear();
  self().cluster_arrived = false;
}
inline void ptx_thread_end() {
  const CpState& cp = self().cp;
  if (!cp.open.empty()) fail("kernel exits with cp.async copies never committed (never waited for)");
  if (self().cluster_arrived) fail("kernel exits having arrived at the cluster barrier without waiting");
  for (const auto& g : cp.pending)
    if (!g.empty()) fail("kernel exits with committed cp.async copies not waited for (wait_group 0 missing)");
  // The record thread 0 checks: commits, then each group's size, then the destinations.
  std::vector<uint64_t>& record = block_state->thread_records[threadIdx.x];
  record.assign(1, cp.commits);
  record.insert(record.end(), cp.group_sizes.begin(), cp.group_sizes.end());
  record.insert(record.end(), cp.dsts.begin(), cp.dsts.end());
  const TsanIgnore blind;  // a statistic: its lock must not order concurrent blocks
  std::lock_guard<std::mutex> lock(stats_mutex);
  total_copies += cp.copies;
}
inline void ptx_block_end() {
  const std::vector<std::vector<uint64_t>>& records = block_state->thread_records;
  const uint64_t groups = records[0][0];
  for (size_t t = 1; t < blockDim.x; ++t)
    if (records[t][0] != groups) {
      char msg[160];
      std::snprintf(msg, sizeof msg, "threads 0 and %zu committed %llu and %llu cp.async groups: wait_group counts "
                    "disagree across the block", t, (unsigned long long)groups, (unsigned long long)records[t][0]);
      fail(msg);
    }
  // Bank conflicts of the copies' stores, a quarter warp per wavefront. The k-th copy of each lane
  // in a commit group is taken as one instruction of the warp (the kernels' copy loops run in
  // step across a warp); a group whose lanes issued different numbers of copies is not counted.
  for (size_t w = 0; w + 32 <= blockDim.x; w += 32) {
    size_t at[32];  // each lane's next destination in its record
    for (int l = 0; l < 32; ++l) at[l] = 1 + groups;
    for (uint64_t g = 0; g < groups; ++g) {
      const uint64_t n = records[w][1 + g];
      bool even = true;
      for (int l = 1; l < 32; ++l) even = even && records[w + l][1 + g] == n;
      if (!even) cp_async_uneven_groups.fetch_add(1, std::memory_order_relaxed);
      for (uint64_t k = 0; even && k < n; ++k)
        for (int q = 0; q < 4; ++q) {
          uintptr_t dsts[8];
          for (int i = 0; i < 8; ++i) dsts[i] = records[w + 8 * q + i][at[8 * q + i] + k];
          cp_async_banks.add(dsts);
        }
      for (int l = 0; l < 32; ++l) at[l] += records[w + l][1 + g];
    }
  }
}
// ---- thread-block clusters (core/cluster.cuh; PTX ISA "barrier.cluster", "mapa", "st" with
// .shared::cluster, %cluster_ctarank) -----------------------------------------------------------
// A cluster launch's CTAs are fibers of one set (cuda_on_cpu.h's launch_grid). The barrier is one
// over all their threads (under TSan it orders memory as barrier.cluster's release / acquire
// does, and nothing more); a store into CTA `rank`'s shared memory writes that CTA's dynamic
// shared memory at the offset `local` has in this CTA's. A thread alternates arrive and wait, and
// leaves the kernel having waited. (Outside a cluster launch, where the GPU has a cluster of one,
// the barrier is not modelled: an error.)
inline unsigned cluster_ctarank() { return self().cluster_rank; }
inline ClusterState& running_cluster(const char* what) {
  auto* cs = static_cast<ClusterState*>(self().cluster);
  if (!cs) fail(what);
  return *cs;
}
inline void cluster_arrive() {
  ThreadState& me = self();
  ClusterState& cs = running_cluster("barrier.cluster.arrive outside a cluster launch");
  if (me.cluster_arrived) fail("barrier.cluster.arrive twice without a wait between");
  const Untraced untraced;
  progress.fetch_add(1, std::memory_order_relaxed);
  me.cluster_phase = cs.barrier.arrive();
  me.cluster_arrived = true;
}
inline void cluster_wait() {
  ThreadState& me = self();
  ClusterState& cs = running_cluster("barrier.cluster.wait outside a cluster launch");
  if (!me.cluster_arrived) fail("barrier.cluster.wait without an arrive before it");
  const Untraced untraced;
  trace_sync_point();
  progress.fetch_add(1, std::memory_order_relaxed);
  cs.barrier.wait(me.cluster_phase);
  me.cluster_arrived = false;
}
// The address in CTA `rank`'s dynamic shared memory of `local` (in this CTA's), `bytes` wide.
inline unsigned char* cluster_address(const void* local, unsigned rank, size_t bytes, const char* what) {
  auto* cs = static_cast<ClusterState*>(self().cluster);
  const auto* base = static_cast<const unsigned char*>(smem);
  const auto* p = static_cast<const unsigned char*>(local);
  if (p < base || p + bytes > base + smem_bytes) fail(what);  // not in this CTA's dynamic shared memory
  if ((p - base) % bytes) fail(what);                          // misaligned
  if (rank >= (cs ? cs->ctas.size() : 1)) fail(what);          // a rank outside the cluster
  unsigned char* target = cs ? cs->ctas[rank]->smem.get() : static_cast<unsigned char*>(smem);
  return target + (p - base);
}
inline void cluster_store_u32(const void* local, unsigned rank, uint32_t value) {
  *reinterpret_cast<uint32_t*>(cluster_address(local, rank, 4, "cluster_store_u32: a bad address or rank")) = value;
}
inline uint64_t cluster_load_u64(const void* local, unsigned rank) {
  return *reinterpret_cast<const uint64_t*>(cluster_address(local, rank, 8, "cluster_load_u64: a bad address or rank"));
}
inline float4 cluster_load_f4(const float* local, unsigned rank) {
  return *reinterpret_cast<const float4*>(cluster_address(local, rank, 16, "cluster_load_f4: a bad address or rank"));
}

// Each thread writes its own record after the kernel body; thread 0 reads them all after the
// block's closing barrier (launch_grid), before the next block's opening one.
inline const bool ptx_hooks_installed = [] {
  thread_block_begin = ptx_thread_begin;
  thread_block_end = ptx_thread_end;
  block_end = ptx_block_end;
  return true;
}();

}  // namespace emu

inline size_t __cvta_generic_to_shared(const void* p) { return emu::cvta_shared(p); }

// The names the kernels call (core/mma.cuh, core/cp_async.cuh, attention/attention_smem.cuh,
// block_diag_matmul/block_diag_matmul_kernel.cuh), whose PTX definitions run.sh renames away.
namespace mmm {
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row_addr) { emu::ldmatrix_x4(r, row_addr, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row_addr) { emu::ldmatrix_x4(r, row_addr, true); }
inline void ldsm_x4(uint32_t (&r)[4], uint32_t addr) { emu::ldmatrix_x4(r, emu::shared_ptr(addr), false); }
inline void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr) { emu::ldmatrix_x4(r, emu::shared_ptr(addr), true); }
template <typename T>
inline void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>, "mma_m16n8k16: fp16 or bf16");
  emu::mma_m16n8k16<std::is_same_v<T, __nv_bfloat16>>(d, a, b);
}
inline void cp_async_16(void* smem, const void* gmem, bool pred) { emu::cp_async_16(smem, gmem, pred ? 16 : 0); }
inline void cp_async_16_bytes(void* smem, const void* gmem, int bytes) { emu::cp_async_16(smem, gmem, bytes); }
inline void cp_async_commit() { emu::cp_async_commit(); }
template <int N>
inline void cp_async_wait() { emu::cp_async_wait<N>(); }
inline unsigned cluster_ctarank() { return emu::cluster_ctarank(); }
inline void cluster_arrive() { emu::cluster_arrive(); }
inline void cluster_wait() { emu::cluster_wait(); }
inline void cluster_store_u32(const void* local, unsigned rank, uint32_t value) { emu::cluster_store_u32(local, rank, value); }
inline uint64_t cluster_load_u64(const void* local, unsigned rank) { return emu::cluster_load_u64(local, rank); }
inline float4 cluster_load_f4(const float* local, unsigned rank) { return emu::cluster_load_f4(local, rank); }
}  // namespace mmm
