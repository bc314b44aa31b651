// What each emulated CUDA thread owns: its indices and the per-thread state of the emulator's
// layers (memory_counts.h's access trace, ptx_on_cpu.h's cp.async groups and shared-memory
// handles). A block's threads run as fibers on one OS thread (cuda_on_cpu.h), so this cannot be
// thread_locals: they would be one set for all of a block's threads, and under ThreadSanitizer,
// which sees each fiber as a thread of its own, every use would race. Instead one thread_local
// pointer names the running thread's record; the fiber scheduler sets it before each switch.
#pragma once
#include <cstdint>
#include <deque>
#include <vector>

// CUDA's index type (threadIdx, blockIdx).
struct uint3 { unsigned x = 0, y = 0, z = 0; };

namespace emu {

// ---- memory_counts.h: one thread's accesses in one block, and where its barriers fell ----------
struct Access {
  uintptr_t addr;
  const void* site;  // the instruction after the instrumentation call: names the source line
  uint32_t bytes;
  bool global;
};
struct AccessTrace {
  std::vector<Access> accesses;
  std::vector<size_t> syncs;  // accesses.size() at each
};

// ---- ptx_on_cpu.h: cp.async copies issued, committed and waited for ----------------------------
struct CpCopy {
  unsigned char* dst;
  const unsigned char* src;
  int src_bytes;
};
struct CpState {
  std::vector<CpCopy> open;                 // issued, not yet committed
  std::deque<std::vector<CpCopy>> pending;  // committed groups, oldest first
  uint64_t commits = 0, copies = 0;
  std::vector<uint64_t> group_sizes, dsts;  // this block's groups and destinations, for the bank count
};

constexpr int kMaxSharedRanges = 16;

struct ThreadState {
  uint3 thread_idx, block_idx;
  uint32_t collective_seq = 0;  // this thread's warp collectives in the running block
  // memory_counts.h. The running block's shared memory, [begin, end) each (ptx_on_cpu.h's
  // check_shared reads it in every mode), and this thread's stack, never global memory.
  AccessTrace access_trace;
  bool tracing = false;  // inside a kernel body, outside the emulator's own code
  uintptr_t shared_begin[kMaxSharedRanges] = {}, shared_end[kMaxSharedRanges] = {};
  int shared_range_count = 0;
  uintptr_t stack_begin = 0, stack_end = 0;
  // Its block (cuda_on_cpu.h's BlockState, dynamic shared memory) and cluster: the fiber
  // scheduler makes them the OS thread's emu::block_state / emu::smem at each switch, since the
  // fibers of one OS thread may run different CTAs of a cluster.
  void* block = nullptr;
  void* block_smem = nullptr;
  void* cluster = nullptr;  // cuda_on_cpu.h's ClusterState; null outside cluster launches
  unsigned cluster_rank = 0;
  uint32_t cluster_phase = 0;    // the cluster barrier's phase this thread arrived at
  bool cluster_arrived = false;  // arrived, not yet waited
  // ptx_on_cpu.h
  CpState cp;
  std::vector<const unsigned char*> shared_bases;  // __cvta_generic_to_shared's handles
};

// The running emulated thread (null outside launches: code there gets its OS thread's record).
inline thread_local ThreadState* current_thread = nullptr;
[[gnu::noinline]] inline ThreadState& outside_kernels() {
  static thread_local ThreadState own;
  return own;
}
inline ThreadState& self() {
  ThreadState* const running = current_thread;
  return running ? *running : outside_kernels();
}

}  // namespace emu

// The CUDA built-ins, read and written as the running thread's.
#define threadIdx (::emu::self().thread_idx)
#define blockIdx (::emu::self().block_idx)
