// CUDA on CPU threads: just enough of the CUDA language and runtime for the kernels' own source to
// compile with g++ and run on the host, so their index math can be checked against the CPU twins
// without a GPU. Used by the drivers next to this file (fft.cpp, fftconv.cpp, butterfly.cpp,
// attention.cpp); build and run them with tests/emulate/run.sh. The PTX the tensor-core kernels
// use (ldmatrix, mma.sync, cp.async) is modelled on top of this by ptx_on_cpu.h.
//
// What it emulates
//   - __global__/__device__/__host__/__forceinline__/__launch_bounds__ compile away; __align__ is
//     __attribute__((aligned)); __shared__ becomes `static`, and run.sh rewrites a kernel's
//     `__shared__ T name[...];` into emu::block_static (an array per running block).
//   - launch_grid(grid (dim3), threads, smem_bytes, body): `threads` fibers of the calling thread,
//     created once per launch, run the blocks one after another (blockIdx x fastest); threadIdx /
//     blockIdx are the running fiber's (thread_state.h) (threads == 1: the calling thread itself,
//     for drivers that run a block's work in one "thread"); under ThreadSanitizer two such sets
//     run at once, each on an OS thread of its own (see concurrent_blocks). Cluster launches
//     (cudaLaunchKernelEx with a cluster dimension along x, 1-8 CTAs): a cluster's CTAs run
//     together, their threads fibers of one set, each CTA with its own shared memory and
//     barriers; ptx_on_cpu.h models the cluster barrier and the stores into another CTA's shared
//     memory; cudaOccupancyMaxActiveClusters reports emu::active_clusters.
//     Dynamic shared memory is a heap block of exactly smem_bytes per running block (so
//     AddressSanitizer sees overruns), 128-byte aligned, reached through emu_dynamic_smem() /
//     emu::smem, filled at each block's start with emu::smem_fill (0; the PTX drivers use 0xff:
//     NaN, so reading shared memory nobody wrote shows); static shared arrays start the same way.
//   - emu_launch (what run.sh rewrites kernel<<<...>>> into) refuses what the runtime would:
//     bad block sizes, empty or oversized grids, more dynamic shared memory than the opt-in limit
//     or, above 48 KB, than cudaFuncSetAttribute(MaxDynamicSharedMemorySize) allowed the kernel.
//   - __syncthreads() = a barrier over the block; __syncwarp() = a barrier over the warp;
//     __shfl_xor_sync = a warp exchange (any 32/64-bit type, full warps and full masks only);
//     warp exchanges check that all 32 lanes are in the same collective; a wait no thread can end
//     (a thread or lane that skipped a barrier) is reported at once, and a watchdog aborts when
//     no barrier completes for emu::hang_seconds (a thread looping forever between barriers).
//   - float2/float4/uint4, dim3, __half/__nv_bfloat16 and their conversions (the bit-exact CPU
//     twins of core/numeric.h), __half2/__nv_bfloat162 (.x in the low half) with
//     __floats2{half,bfloat16}2_rn and __{half2,bfloat162}2float2, sincospif (long double),
//     __brev, min/max, atomicAdd (std::atomic_ref), warp_sum/to_f/from_f of core/cuda_utils.cuh
//     (or, with MMM_EMU_REAL_CUDA_UTILS, the real header), and the few runtime calls a launcher
//     makes (device attributes from emu::optin_smem / sm_smem / sms / cc_major, occupancy from
//     emu::blocks_per_sm, so a driver can shrink shared memory or the grid to force other
//     paths), rsqrtf (1/sqrt, rounded once).
// Races: built with ThreadSanitizer (run.sh, MMM_EMULATE_SANITIZE=thread), two accesses to one
// location by threads of a block, at least one a write, that no barrier orders are reported
// however the host scheduled them (a barrier below orders its own participants across one phase
// only, as on the GPU; TSan remembers the last four accesses per 8 bytes). Inside a warp only __syncwarp and
// __syncthreads order, as on the GPU (a shuffle, ldmatrix or mma does not: see warp_exchange).
// Between CTAs: two blocks run at once on OS threads of their own, so TSan also reports two CTAs that
// touch one location (one writing) without atomics, e.g. aliased per-CTA scratch or overlapping
// output tiles, for the pairs of blocks that landed in different sets (see block_set: every
// even-odd neighbour pair, about half the pairs at any other distance).
// What it cannot catch
//   - without ThreadSanitizer, races and missing barriers that happen to be harmless under the
//     host scheduler (the lazy cp.async mode of ptx_on_cpu.h makes the pipeline ones visible,
//     not every other one); bank conflicts and uncoalesced global accesses outside the counts
//     mode of run.sh (memory_counts.h counts plain loads and stores there; ptx_on_cpu.h counts
//     ldmatrix's and cp.async's bank conflicts always), and there the vector width nvcc would
//     pick where GCC's differs (float2 / float4 values are copied whole, -fno-tree-sra; scalars
//     next to each other are not merged), real warp timing / divergence /
//     independent thread scheduling, partial-warp masks, misaligned ordinary loads (UBSan sees
//     some), register pressure and spills, the hardware's accumulation order and rounding inside
//     mma, exp2f/log2f ulp differences, and PTX other than ldmatrix .x4, mma.sync m16n8k16
//     f16/bf16, cp.async .cg 16 and core/cluster.cuh's: those need tests/cuda/*.cu on a GPU (and
//     compute-sanitizer); whether the hardware fits a cluster at all (the occupancy API's answer
//     is a driver's setting here).
#pragma once
#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <thread>
#include <type_traits>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__) && !defined(MMM_EMU_COUNTS)  // counts mode: the instrumentation, no runtime
#define MMM_EMU_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#endif

#include "core/numeric.h"
#include "memory_counts.h"
#include "thread_state.h"

#define MMM_FFT_HOST_EMULATION  // core/fft.cuh, fft/, fftconv/: skip cuda_runtime.h, use emu_dynamic_smem()
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct alignas(8) float2 { float x, y; };  // the CUDA types' alignment, so UBSan checks vector accesses
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
// threadIdx and blockIdx are the running emulated thread's (thread_state.h); the launch shape is global.
inline dim3 blockDim, gridDim;
using std::max;
using std::min;

namespace emu {
// An emulation error (a broken PTX rule, a warp divergence, a deadlock): say where and stop.
[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "EMULATION ERROR (block %u,%u,%u thread %u): %s\n", blockIdx.x, blockIdx.y, blockIdx.z,
               threadIdx.x, what);
  std::fflush(stderr);
  std::abort();
}

#if defined(__SANITIZE_THREAD__)
// What ThreadSanitizer sees of the emulator's own synchronisation: TsanIgnore makes a scope blind
// (its locks and waits order nothing, its accesses are not recorded); __tsan_release/acquire
// state the orderings the emulated hardware provides.
extern "C" {
void AnnotateIgnoreSyncBegin(const char* file, int line);
void AnnotateIgnoreSyncEnd(const char* file, int line);
void AnnotateIgnoreReadsBegin(const char* file, int line);
void AnnotateIgnoreReadsEnd(const char* file, int line);
void AnnotateIgnoreWritesBegin(const char* file, int line);
void AnnotateIgnoreWritesEnd(const char* file, int line);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
}
struct TsanIgnore {
  TsanIgnore() {
    AnnotateIgnoreSyncBegin(__FILE__, __LINE__);
    AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
    AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
  }
  ~TsanIgnore() {
    AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
    AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
    AnnotateIgnoreSyncEnd(__FILE__, __LINE__);
  }
};
#else
struct TsanIgnore {};
#endif

// ---- Fibers: a block's threads on one OS thread --------------------------------------------------
// As OS threads, hundreds of emulated threads on a few cores spent most of the emulation's time
// in the kernel's scheduler: every barrier and warp collective put threads to sleep and woke them.
// So a block's threads are fibers of one OS thread instead: each runs until it waits at a
// barrier, then the next runnable one runs (round robin), and a barrier's last arriver makes its
// waiters runnable. A wait that nobody can end is a deadlock, reported at once. Where each thread
// waits is still decided only by the kernel's barriers, so TSan is told that a switch orders
// nothing (only a fiber's start and end order it after the launcher and before the join).
//
// The switch saves the registers the System V x86-64 ABI preserves across a call, and the SSE and
// x87 control words, on the old stack, and loads them from the new one. A fiber's mapping is a
// guard page, its stack, then its ThreadState (so the counts mode sees the record as the thread's
// own memory, as the stack, not as global memory).
extern "C" void emu_fiber_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .weak emu_fiber_switch
  .type emu_fiber_switch, @function
emu_fiber_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_fiber_switch, .-emu_fiber_switch
)");

struct Fiber {
  unsigned index = 0;              // the emulated thread (threadIdx.x)
  unsigned char* mapping = nullptr;  // guard page, stack, ThreadState
  unsigned char* stack = nullptr;  // its lowest usable byte
  size_t stack_bytes = 0;
  ThreadState* state = nullptr;
  void* sp = nullptr;  // while switched out
  bool runnable = true, started = false, done = false;
  const char* waits_at = nullptr;  // the barrier it waits at, for a deadlock's report
  void* tsan = nullptr;            // its ThreadSanitizer context
  void* fake_stack = nullptr;      // AddressSanitizer's, while switched out
};

class FiberSet;
inline thread_local FiberSet* running_fibers = nullptr;  // the set this OS thread schedules
struct BlockState;
// The running fiber's block and its dynamic shared memory (FiberSet::resume sets them from its
// ThreadState: in a cluster launch one OS thread's fibers run several CTAs).
inline thread_local BlockState* block_state = nullptr;
inline thread_local void* smem = nullptr;
inline thread_local size_t smem_bytes = 0;  // the same for every CTA of a launch
// Blind to TSan: these are the OS thread's, which sees every fiber as a thread of its own.
inline void set_running_block(const ThreadState& t) {
  const TsanIgnore blind;
  if (t.block) block_state = static_cast<BlockState*>(t.block), smem = t.block_smem;
}
// What a fiber keeps between launches: its mapping and its ThreadSanitizer context.
struct FiberMemory {
  unsigned char* mapping;
  void* tsan;
};
inline std::vector<std::vector<FiberMemory>> fiber_pools;  // per block set (launch_grid), see FiberSet

// The threads of one block set (launch_grid): `threads` fibers that each call body(index).
// Their mappings and TSan contexts come from and go back to `pool`, the set's: mapping them
// afresh and faulting their pages in (TSan's context alone is over a megabyte) took most of a
// launch's time. Under TSan they thus pass from one launch's set s to the next one's, along the
// launch's happens-before chain (fibers, their OS thread, the join, the next launch's OS thread).
class FiberSet {
 public:
  static constexpr size_t kMappingBytes = size_t(4) << 20, kGuardBytes = 4096;

  FiberSet(int threads, std::vector<FiberMemory>& pool, std::function<void(unsigned)> body)
      : pool_(pool), body_(std::move(body)), fibers_(size_t(threads)) {
    const size_t state_bytes = (sizeof(ThreadState) + 63) & ~size_t(63);
    for (int t = 0; t < threads; ++t) {
      Fiber& f = fibers_[size_t(t)];
      f.index = unsigned(t);
      if (!pool_.empty()) {
        f.mapping = pool_.back().mapping;
        f.tsan = pool_.back().tsan;
        pool_.pop_back();
      } else {
        void* m = mmap(nullptr, kMappingBytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
        if (m == MAP_FAILED) { std::perror("emulation: a fiber's stack"); std::abort(); }
        f.mapping = static_cast<unsigned char*>(m);
        mprotect(f.mapping, kGuardBytes, PROT_NONE);
#if defined(__SANITIZE_THREAD__)
        f.tsan = __tsan_create_fiber(0);
#endif
      }
      f.state = new (f.mapping + kMappingBytes - state_bytes) ThreadState;
      f.stack = f.mapping + kGuardBytes;
      f.stack_bytes = kMappingBytes - kGuardBytes - state_bytes;
      f.state->stack_begin = reinterpret_cast<uintptr_t>(f.mapping);
      f.state->stack_end = reinterpret_cast<uintptr_t>(f.mapping) + kMappingBytes;
      // The first switch into it "returns" to fiber_entry with the ABI's stack alignment (rsp + 8
      // a multiple of 16); below the return address, what emu_fiber_switch pops: six registers,
      // then MXCSR's and the x87 control word's defaults.
      auto* top = reinterpret_cast<uint64_t*>(f.stack + f.stack_bytes);  // 64-byte aligned
      top[-1] = 0;
      top[-2] = reinterpret_cast<uint64_t>(&fiber_entry);
      for (int r = 3; r <= 8; ++r) top[-r] = 0;
      top[-9] = 0x1f80u | (uint64_t(0x037fu) << 32);
      f.sp = &top[-9];
    }
  }
  ~FiberSet() {
    for (Fiber& f : fibers_) {
      f.state->~ThreadState();
#if defined(MMM_EMU_ASAN)
      // The frames' redzones are not the next user's (ASan clears big ranges by remapping the shadow).
      __asan_unpoison_memory_region(f.mapping + kGuardBytes, kMappingBytes - kGuardBytes);
#endif
      pool_.push_back({f.mapping, f.tsan});
    }
  }

  // Runs the fibers until all have finished.
  void run() {
    running_fibers = this;
#if defined(__SANITIZE_THREAD__)
    tsan_ = __tsan_get_current_fiber();
#endif
    for (;;) {
      bool alive = false, ran = false;
      for (Fiber& f : fibers_) {
        if (f.done) continue;
        alive = true;
        if (!f.runnable) continue;
        resume(f);
        ran = true;
      }
      if (!alive) break;
      if (!ran) report_deadlock();
    }
    running_fibers = nullptr;
  }

  // The running fiber waits in `queue` (a barrier's) until made runnable again.
  static void wait(std::vector<Fiber*>& queue, const char* at) {
    FiberSet* set = running_fibers;
    if (!set || !set->running_) fail("a barrier with more than one participant outside a fiber");
    Fiber& f = *set->running_;
    f.runnable = false;
    f.waits_at = at;
    queue.push_back(&f);
    set->switch_to_scheduler(f, false);
  }

 private:
  void resume(Fiber& f) {
    const bool first = !f.started;
    {
      const TsanIgnore blind;  // the bookkeeping orders nothing; the switch below states what it orders
      f.started = true;
      running_ = &f;
      current_thread = f.state;
      set_running_block(*f.state);
    }
#if defined(__SANITIZE_THREAD__)
    __tsan_switch_to_fiber(f.tsan, first ? 0 : __tsan_switch_to_fiber_no_sync);
#endif
#if defined(MMM_EMU_ASAN)
    void* fake_stack = nullptr;
    __sanitizer_start_switch_fiber(&fake_stack, f.stack, f.stack_bytes);
#endif
    emu_fiber_switch(&sp_, f.sp);
#if defined(MMM_EMU_ASAN)
    __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
    (void)first;
    const TsanIgnore blind;
    running_ = nullptr;
    current_thread = nullptr;
  }
  void switch_to_scheduler(Fiber& f, bool finished) {
#if defined(__SANITIZE_THREAD__)
    __tsan_switch_to_fiber(tsan_, finished ? 0 : __tsan_switch_to_fiber_no_sync);
#endif
#if defined(MMM_EMU_ASAN)
    __sanitizer_start_switch_fiber(finished ? nullptr : &f.fake_stack, scheduler_stack_, scheduler_stack_bytes_);
#endif
    emu_fiber_switch(&f.sp, sp_);
#if defined(MMM_EMU_ASAN)
    __sanitizer_finish_switch_fiber(f.fake_stack, nullptr, nullptr);
#endif
    (void)finished;
  }
  [[noreturn]] static void fiber_entry() noexcept {
    FiberSet& set = *running_fibers;
#if defined(MMM_EMU_ASAN)
    __sanitizer_finish_switch_fiber(nullptr, &set.scheduler_stack_, &set.scheduler_stack_bytes_);
#endif
    Fiber& f = *set.running_;
    set.body_(f.index);
    {
      const TsanIgnore blind;
      f.done = true;
    }
    set.switch_to_scheduler(f, true);
    std::abort();  // never resumed
  }
  [[noreturn]] void report_deadlock() {
    std::fprintf(stderr, "EMULATION ERROR: a deadlock (threads of a block or lanes of a warp wait at different "
                 "barriers, or some have left the kernel):\n");
    int shown = 0;
    for (const Fiber& f : fibers_)
      if (!f.done && shown++ < 8)
        std::fprintf(stderr, "  block %u,%u,%u thread %u waits at %s\n", f.state->block_idx.x, f.state->block_idx.y,
                     f.state->block_idx.z, f.state->thread_idx.x, f.waits_at);
    std::fflush(stderr);
    std::abort();
  }

  std::vector<FiberMemory>& pool_;
  std::function<void(unsigned)> body_;
  std::vector<Fiber> fibers_;
  Fiber* running_ = nullptr;
  void* sp_ = nullptr;  // the scheduler's, while a fiber runs
  void* tsan_ = nullptr;
  const void* scheduler_stack_ = nullptr;
  size_t scheduler_stack_bytes_ = 0;
};

// A barrier of fibers (all of one FiberSet), split-phase as barrier.cluster is: arrive() returns
// the phase arrived at, wait(phase) returns once that phase has completed (its last arriver makes
// the waiters runnable); __syncthreads and the warp barriers are arrive_and_wait.
class FiberBarrier {
 public:
  FiberBarrier(int count, const char* name) : count_(count), name_(name) {}
  uint32_t phase() const { return phase_; }
  uint32_t arrive() {
    const uint32_t phase = phase_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++phase_;
      for (Fiber* f : waiting_) f->runnable = true;
      waiting_.clear();
    }
    return phase;
  }
  void wait(uint32_t phase) {
    while (phase_ == phase) FiberSet::wait(waiting_, name_);
  }
  void arrive_and_wait() { wait(arrive()); }
 private:
  const int count_;
  const char* const name_;
  int arrived_ = 0;
  uint32_t phase_ = 0;
  std::vector<Fiber*> waiting_;
};

#if defined(__SANITIZE_THREAD__)
// A barrier that orders memory as a GPU barrier does: what a participant did before arriving at
// phase p happens before what any participant does after its wait for p, and nothing more (in
// the split form, work between an arrive and its wait is ordered with nobody's). The fiber
// barrier's own synchronisation is hidden from TSan, which would otherwise see more (every
// participant of phase p ordered after every one, through the count and the phase word). Each
// phase's ordering goes through its own sync object: releases of phase p + 2 (same slot) cannot
// start before every participant has waited for phase p (it arrives at p + 1 only after).
class Barrier {
 public:
  Barrier(int count, const char* name) : sync_(count, name) {}
  uint32_t arrive() {
    uint32_t phase;
    {
      const TsanIgnore blind;
      phase = sync_.phase();  // stable until this participant arrives
    }
    __tsan_release(&order_[phase & 1]);
    const TsanIgnore blind;
    return sync_.arrive();
  }
  void wait(uint32_t phase) {
    {
      const TsanIgnore blind;
      sync_.wait(phase);
    }
    __tsan_acquire(&order_[phase & 1]);
  }
  void arrive_and_wait() { wait(arrive()); }
 private:
  FiberBarrier sync_;
  char order_[2] = {};
};
#else
using Barrier = FiberBarrier;
#endif
inline std::atomic<uint64_t> progress{0};  // barrier arrivals, for the hang watchdog
inline size_t max_smem_used = 0;
inline int max_block_threads = 1024;  // a driver may lower it to its kernels' __launch_bounds__
inline int optin_smem = 232448, sms = 132;  // what cudaDeviceGetAttribute reports (H100)
inline int sm_smem = 233472;                 // and for the shared memory per SM
inline int blocks_per_sm = 1;  // what cudaOccupancyMaxActiveBlocksPerMultiprocessor reports
// The grid y/z size a launcher may use, where run.sh substitutes it for the hardware's 65535
// (block_diag_matmul): lowered, the kernels' grid-stride loops run with test-sized shapes.
inline int64_t grid_yz_limit = 65535;
// Likewise for a launcher's cap on the CTAs of a grid-stride kernel (hadamard's clusters).
inline int64_t grid_x_limit = int64_t(1) << 30;
// The byte every block's dynamic shared memory starts as. Real shared memory starts as whatever
// the last block left; 0xff makes a read of never-written shared memory a NaN in fp16, bf16
// and fp32 alike (the PTX drivers set it; 0 keeps the older drivers' zeroed memory).
inline int smem_fill = 0;
inline int hang_seconds = 120;  // no barrier completing for this long: a hang (Watchdog), abort

// Per-thread hooks the PTX layer (ptx_on_cpu.h) installs: a thread's start and end of each
// block, and the end of a block on thread 0 after every thread has finished it.
inline void (*thread_block_begin)() = nullptr;
inline void (*thread_block_end)() = nullptr;
inline void (*block_end)() = nullptr;

// One warp-collective exchange slot per thread, double-buffered (see warp_exchange).
struct LaneSlot {
  uint32_t op = 0;   // which collective (ldmatrix, mma, shuffle...): lanes must agree
  uint32_t seq = 0;  // the lane's collective count in this block: lanes must agree
  const void* ptr = nullptr;
  uint32_t w[10] = {};
};

// What a running block owns: its barriers, warp-exchange slots, dynamic shared memory (exactly
// smem_bytes, so AddressSanitizer sees overruns; aligned like extern __shared__ __align__(128)),
// its static __shared__ arrays (block_static) and a record per thread that the PTX layer's
// end-of-block checks read. One per concurrently running block (see launch_grid), reused by the
// blocks that run after it on the same threads.
struct AlignedFree {
  void operator()(void* p) const { ::operator delete(p, std::align_val_t(128)); }
};
using SharedBytes = std::unique_ptr<unsigned char, AlignedFree>;
inline SharedBytes alloc_shared(size_t bytes) {
  return SharedBytes(static_cast<unsigned char*>(::operator new(std::max<size_t>(bytes, 1), std::align_val_t(128))));
}
struct BlockState {
  BlockState(int threads, size_t smem_bytes)
      : barrier(threads, "__syncthreads"), slots{std::vector<LaneSlot>(size_t(threads)), std::vector<LaneSlot>(size_t(threads))},
        smem(alloc_shared(smem_bytes)), thread_records(size_t(threads)), access_traces(size_t(threads)) {
    for (int w = 0; w < (threads + 31) / 32; ++w) warps.push_back(std::make_unique<Barrier>(std::min(32, threads - 32 * w), "__syncwarp or a warp collective"));
    std::memset(smem.get(), 0, std::max<size_t>(smem_bytes, 1));
  }
  Barrier barrier;                              // __syncthreads
  std::vector<std::unique_ptr<Barrier>> warps;  // __syncwarp and the warp collectives
  std::vector<LaneSlot> slots[2];
  SharedBytes smem;
  std::mutex statics_mutex;
  std::vector<std::pair<const void*, SharedBytes>> statics;  // (declaration, this block's array)
  std::vector<std::vector<uint64_t>> thread_records;  // written by each thread, read by thread 0
  std::vector<AccessTrace> access_traces;             // the same (MMM_EMULATE_SANITIZE=counts, memory_counts.h)
};

// The CTAs of one cluster (a cluster launch, launch_grid's `cluster` > 1), run as fibers of one
// FiberSet: the cluster barrier and the CTAs' shared memory for the distributed-shared-memory
// stores (ptx_on_cpu.h's cluster_* models).
struct ClusterState {
  explicit ClusterState(int threads) : barrier(threads, "barrier.cluster") {}
  Barrier barrier;
  std::vector<BlockState*> ctas;  // by rank
};

inline void warp_wait() {
  const Untraced untraced;
  trace_sync_point();
  progress.fetch_add(1, std::memory_order_relaxed);
  block_state->warps[threadIdx.x / 32]->arrive_and_wait();
}

// Under ThreadSanitizer a warp collective must not order memory between lanes: on the GPU a
// shuffle, ldmatrix or mma does not make one lane's shared-memory store visible to another, only
// __syncwarp and __syncthreads do. So the exchange below runs blind to TSan (its barrier, slot
// writes and reads neither synchronise nor count as accesses) and hands each lane a copy.
#if defined(__SANITIZE_THREAD__)
using WarpSlots = std::array<LaneSlot, 32>;
#else
using WarpSlots = const LaneSlot*;
#endif

// A warp collective: every lane deposits `mine`, one warp barrier, then the lanes' slots (index
// by lane) are readable until this lane's next collective. Two buffers alternate, so the next
// collective's writes cannot clobber slots a slower lane still reads (writing buffer b again
// needs the barrier of the collective in between, which every lane reaches only after reading).
// All 32 lanes must take part in the same collective in the same order: a lane that diverges
// either deadlocks the barrier (FiberSet reports it) or is caught by the op/seq check.
inline WarpSlots warp_exchange(LaneSlot mine) {
  const TsanIgnore blind;
  const Untraced untraced;
  if (blockDim.x % 32) fail("a warp collective in a block that is not whole warps");
  const unsigned t = threadIdx.x;
  uint32_t& collective_seq = self().collective_seq;
  std::vector<LaneSlot>& buf = block_state->slots[collective_seq & 1];
  mine.seq = collective_seq++;
  buf[t] = mine;
  warp_wait();
  const LaneSlot* lanes = &buf[t & ~31u];
  for (int l = 0; l < 32; ++l)
    if (lanes[l].op != mine.op || lanes[l].seq != mine.seq) {
      char msg[160];
      std::snprintf(msg, sizeof msg, "warp %u: lane %d is in collective op %u #%u, lane %u in op %u #%u", t / 32, l,
                    lanes[l].op, lanes[l].seq, t % 32, mine.op, mine.seq);
      fail(msg);
    }
#if defined(__SANITIZE_THREAD__)
  WarpSlots copy;
  std::copy(lanes, lanes + 32, copy.begin());
  return copy;
#else
  return lanes;
#endif
}

// Aborts the process when no barrier completes for hang_seconds: a thread that never reaches its
// next barrier, such as a loop waiting for a flag that another thread of its block would set
// (fibers switch only at barriers; a deadlock between barriers FiberSet reports at once).
class Watchdog {
 public:
  Watchdog() : th_([this] { run(); }) {}
  ~Watchdog() {
    { std::lock_guard<std::mutex> g(m_); stop_ = true; }
    cv_.notify_all();
    th_.join();
  }
 private:
  void run() {
    std::unique_lock<std::mutex> g(m_);
    uint64_t last = progress.load();
    auto since = std::chrono::steady_clock::now();
    while (!cv_.wait_for(g, std::chrono::seconds(1), [this] { return stop_; })) {
      const uint64_t now = progress.load();
      if (now != last) { last = now; since = std::chrono::steady_clock::now(); continue; }
      if (std::chrono::steady_clock::now() - since > std::chrono::seconds(hang_seconds)) {
        std::fprintf(stderr, "EMULATION ERROR: no barrier completed for %d s: a thread that never reaches its next "
                     "barrier\n", hang_seconds);
        std::fflush(stderr);
        std::abort();
      }
    }
  }
  std::mutex m_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread th_;
};
}  // namespace emu

inline void __syncthreads() {
  if (blockDim.x > 1) {
    const emu::Untraced untraced;
    emu::trace_sync_point();
    emu::progress.fetch_add(1, std::memory_order_relaxed);
    emu::block_state->barrier.arrive_and_wait();
  }
}
inline void __syncwarp(unsigned = 0xffffffffu) {
  if (blockDim.x > 1) emu::warp_wait();
}

namespace emu {
// A static `__shared__ T name[...];` of a kernel, which run.sh rewrites into
// `auto& name = emu::block_static<T[...]>([] {});` (the lambda's type names the declaration):
// one array per running block, allocated by its first use in the block and filled with
// smem_fill, as dynamic shared memory is. (A C++ static would be one array for all blocks: it
// would carry a block's data into the next and, under TSan, make concurrent blocks race.)
template <class T, class Declaration>
T& block_static(Declaration) {
  static_assert(std::is_trivially_copyable_v<T>, "a __shared__ array of plain values");
  static char key;  // its address names the declaration (a const could be merged with another)
  BlockState& st = *block_state;
  const TsanIgnore blind;  // the lookup orders nothing: only the kernel's barriers may
  const Untraced untraced;
  std::lock_guard<std::mutex> lock(st.statics_mutex);
  for (auto& [k, mem] : st.statics)
    if (k == &key) {
      add_shared_range(mem.get(), sizeof(T));
      return *reinterpret_cast<T*>(mem.get());
    }
  SharedBytes mem = alloc_shared(sizeof(T));
  std::memset(mem.get(), smem_fill, sizeof(T));
  add_shared_range(mem.get(), sizeof(T));
  st.statics.emplace_back(&key, std::move(mem));
  return *reinterpret_cast<T*>(st.statics.back().second.get());
}

// Blocks that run at once under ThreadSanitizer. Each has its own OS thread and BlockState, and
// nothing orders one's memory accesses against another's, so TSan reports two CTAs touching
// one location (one writing) without atomics: aliased scratch, overlapping output tiles. A
// block's set is the digit sum of its index in base `sets`, mod sets (for two: the Thue-Morse
// sequence), so blocks 2i and 2i+1 always differ and about half the pairs at any other distance
// (b and b + gridDim.x, ...) do. Without TSan one set: the blocks one after another, fastest.
#if defined(__SANITIZE_THREAD__)
inline int concurrent_blocks = 2;
#else
inline int concurrent_blocks = 1;
#endif
inline int block_set(uint64_t b, int sets) {
  uint64_t digits = 0;
  for (; b; b /= uint64_t(sets)) digits += b % uint64_t(sets);
  return int(digits % uint64_t(sets));
}
}  // namespace emu

// A kernel launch <<<grid, threads, smem_bytes>>>: body() is the kernel call. The blocks go to
// emu::concurrent_blocks sets, each run by one OS thread (the calling thread when there is one
// set): its `threads` emulated threads are fibers (created once per launch) that run the set's
// blocks one after another (blockIdx x fastest). threads == 1: the OS thread itself runs each
// block's whole work. A cluster launch (`cluster` > 1 CTAs along x, grid.x a multiple of it):
// a set runs one cluster at a time, its CTAs' threads all fibers of one FiberSet (the cluster
// barrier waits for all of them), each CTA with its own BlockState; a cluster starts when every
// CTA of the set's previous one has finished.
template <class Body>
void launch_grid(dim3 grid, int threads, size_t smem_bytes, Body body, int cluster = 1) {
  emu::max_smem_used = std::max(emu::max_smem_used, smem_bytes);
  gridDim = grid;
  blockDim = dim3(unsigned(threads));
  if (cluster < 1 || grid.x % unsigned(cluster) || (cluster > 1 && threads == 1)) emu::fail("launch_grid: bad cluster");
  const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z, clusters = blocks / uint64_t(cluster);
  const int sets = int(std::min<uint64_t>(uint64_t(std::max(emu::concurrent_blocks, 1)), clusters));
  std::vector<std::unique_ptr<emu::BlockState>> states;  // [set][rank]
  std::vector<std::unique_ptr<emu::ClusterState>> cluster_states;
  for (int s = 0; s < sets; ++s) {
    cluster_states.push_back(std::make_unique<emu::ClusterState>(threads * cluster));
    for (int c = 0; c < cluster; ++c) {
      states.push_back(std::make_unique<emu::BlockState>(threads, smem_bytes));
      cluster_states.back()->ctas.push_back(states.back().get());
    }
  }
  if (emu::fiber_pools.size() < size_t(sets)) emu::fiber_pools.resize(size_t(sets));
  // One emulated thread (fiber f of its set: CTA rank f / threads, thread f % threads): its
  // set's clusters.
  auto run_thread = [&](int set, unsigned f) {
    const unsigned rank = f / unsigned(threads), t = f % unsigned(threads);
    emu::BlockState& st = *states[size_t(set * cluster) + rank];
    emu::ClusterState& cs = *cluster_states[size_t(set)];
    emu::ThreadState& me = emu::self();
    me.thread_idx = uint3{t, 0, 0};
    me.block = &st;
    me.block_smem = st.smem.get();
    me.cluster = cluster > 1 ? &cs : nullptr;
    me.cluster_rank = rank;
    emu::set_running_block(me);
    for (uint64_t cl = 0; cl < clusters; ++cl) {
      if (sets > 1 && emu::block_set(cl, sets) != set) continue;
      const uint64_t b = cl * uint64_t(cluster) + rank;
      me.block_idx = uint3{unsigned(b % grid.x), unsigned(b / grid.x % grid.y), unsigned(b / (uint64_t(grid.x) * grid.y))};
      if (cluster > 1) {  // the previous cluster's CTAs have all finished (and may no longer be written)
        const emu::Untraced untraced;
        emu::progress.fetch_add(1, std::memory_order_relaxed);
        cs.barrier.arrive_and_wait();
      }
      if (t == 0 && emu::smem_fill) std::memset(emu::smem, emu::smem_fill, smem_bytes);
      me.collective_seq = 0;
      __syncthreads();  // the fill (and the previous block's end checks) before anyone starts
      if (emu::thread_block_begin) emu::thread_block_begin();
      me.shared_range_count = 0;  // the block's shared memory: dynamic first, then block_static's
      emu::add_shared_range(emu::smem, smem_bytes);
      if (emu::counting_accesses)  // the cluster's other CTAs' (stores into them are shared-memory accesses)
        for (int c = 0; c < cluster; ++c)
          if (unsigned(c) != rank) emu::add_shared_range(cs.ctas[size_t(c)]->smem.get(), smem_bytes);
      if (emu::driver_shared.first) emu::add_shared_range(emu::driver_shared.first, emu::driver_shared.second);
      Body& kernel_call = body;  // read from the launcher's closure before tracing starts
      if constexpr (emu::counting_accesses) {
        me.access_trace = {};
        me.tracing = true;
      }
      kernel_call();
      if constexpr (emu::counting_accesses) {
        me.tracing = false;
        st.access_traces[t] = std::move(me.access_trace);
      }
      if (emu::thread_block_end) emu::thread_block_end();
      __syncthreads();
      if (t == 0) {
        if (emu::counting_accesses && threads > 1) emu::analyse_accesses(st.access_traces);
        if (emu::block_end) emu::block_end();
        st.statics.clear();  // after the closing barrier: TSan checks these frees against every thread's use
      }
    }
  };
  // One set on this OS thread.
  auto run_set = [&](int set) {
    emu::smem_bytes = smem_bytes;
    const auto os_stack = emu::counting_accesses ? emu::note_thread_memory() : std::pair<uintptr_t, uintptr_t>{};
    if (threads == 1) {
      emu::ThreadState me;  // on this stack: the counts mode's local memory
      me.stack_begin = os_stack.first;
      me.stack_end = os_stack.second;
      emu::current_thread = &me;
      run_thread(set, 0);
      emu::current_thread = nullptr;
    } else {
      emu::FiberSet(threads * cluster, emu::fiber_pools[size_t(set)], [&](unsigned f) { run_thread(set, f); }).run();
    }
  };
  if (threads == 1 && sets == 1) {
    run_set(0);
  } else {
    emu::Watchdog watchdog;
    if (sets == 1) {
      run_set(0);
    } else {
      std::vector<std::thread> pool;
      for (int s = 0; s < sets; ++s) pool.emplace_back(run_set, s);
      for (auto& th : pool) th.join();
    }
  }
  if constexpr (emu::counting_accesses) emu::end_launch_cost();
}

// rsqrtf: CUDA's is within 2 ulp of 1/sqrt; the emulation rounds 1/sqrt once (as the CPU twins).
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }

inline float2* emu_dynamic_smem() { return static_cast<float2*>(emu::smem); }

// __shfl_xor_sync over the warp exchange (full warps; the mask must name all 32 lanes).
template <class V>
inline V __shfl_xor_sync(unsigned mask, V v, int lane_mask) {
  static_assert(sizeof(V) <= 8 && std::is_trivially_copyable_v<V>, "__shfl_xor_sync: a 32/64-bit value");
  if (mask != 0xffffffffu) emu::fail("__shfl_xor_sync: only full-warp masks are emulated");
  if constexpr (emu::counting_accesses)
    if (emu::self().tracing && threadIdx.x % 32 == 0) ++emu::launch_shuffles;
  const emu::Untraced untraced;  // the exchange slots are the emulator's, not global memory
  emu::LaneSlot s;
  s.op = 100;
  std::memcpy(s.w, &v, sizeof v);
  const emu::WarpSlots lanes = emu::warp_exchange(s);
  V r;
  std::memcpy(&r, lanes[(threadIdx.x & 31u) ^ unsigned(lane_mask & 31)].w, sizeof r);
  return r;
}
inline void sincospif(float x, float* s, float* c) {
  const long double a = 3.141592653589793238462643383279502884L * x;
  *s = float(std::sin(a));
  *c = float(std::cos(a));
}
inline unsigned __brev(unsigned v) {
  unsigned r = 0;
  for (int b = 0; b < 32; ++b) r |= ((v >> b) & 1u) << (31 - b);
  return r;
}
// atomicAdd on global or shared fp32 / int, as a relaxed read-modify-write (returns the old value).
template <class V>
inline V atomicAdd(V* p, V v) {
  return std::atomic_ref<V>(*p).fetch_add(v, std::memory_order_relaxed);
}

// fp16/bf16 storage and conversions, on the bit-exact CPU twins of core/numeric.h.
struct __half { uint16_t bits; };
struct __nv_bfloat16 { uint16_t bits; };
inline float __half2float(__half h) { return mmm::to_float(mmm::Half{h.bits}); }
inline float __bfloat162float(__nv_bfloat16 h) { return mmm::to_float(mmm::BFloat16{h.bits}); }
inline __half __float2half_rn(float f) { return {mmm::from_float<mmm::Half>(f).bits}; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {mmm::from_float<mmm::BFloat16>(f).bits}; }
// Two 16-bit values in one 32-bit register, .x in the low half (little-endian, as on the GPU).
struct alignas(4) __half2 { __half x, y; };
struct alignas(4) __nv_bfloat162 { __nv_bfloat16 x, y; };
inline __half2 __floats2half2_rn(float lo, float hi) { return {__float2half_rn(lo), __float2half_rn(hi)}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) { return {__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)}; }
inline float2 __half22float2(__half2 h) { return make_float2(__half2float(h.x), __half2float(h.y)); }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return make_float2(__bfloat162float(h.x), __bfloat162float(h.y)); }

// The parts of core/cuda_utils.cuh the older emulated kernels use (fp32 only); drivers that
// compile the real core/cuda_utils.cuh define MMM_EMU_REAL_CUDA_UTILS.
#ifndef MMM_EMU_REAL_CUDA_UTILS
namespace mmm {
inline float to_f(float v) { return v; }
template <typename U> inline U from_f(float v);
template <> inline float from_f<float>(float v) { return v; }
inline float warp_sum(float v) {
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}
}  // namespace mmm
#endif

// The runtime calls a launcher makes (csrc/<op>/<op>_launch.cu, rewritten by run.sh to call
// emu_launch instead of <<<...>>>).
typedef int cudaError_t;
typedef void* cudaStream_t;
enum {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 1,
  cudaDevAttrMultiProcessorCount = 2,
  cudaFuncAttributeMaxDynamicSharedMemorySize = 3,
  cudaDevAttrComputeCapabilityMajor = 4,
  cudaLaunchAttributeClusterDimension = 5,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor = 6
};
namespace emu {
inline int cc_major = 9;  // what cudaDeviceGetAttribute(ComputeCapabilityMajor) reports (H100)
inline int active_clusters = 2;  // what cudaOccupancyMaxActiveClusters reports
}  // namespace emu
inline int cudaDeviceGetAttribute(int* v, int attr, int) {
  *v = attr == cudaDevAttrMaxSharedMemoryPerBlockOptin       ? emu::optin_smem
       : attr == cudaDevAttrMaxSharedMemoryPerMultiprocessor ? emu::sm_smem
       : attr == cudaDevAttrComputeCapabilityMajor          ? emu::cc_major
                                                            : emu::sms;
  return cudaSuccess;
}
// Every kernel is "compiled" for the emulated device.
struct cudaFuncAttributes { int binaryVersion = 0, ptxVersion = 0; };
template <class K> int cudaFuncGetAttributes(cudaFuncAttributes* a, K) {
  a->binaryVersion = a->ptxVersion = 10 * emu::cc_major;
  return cudaSuccess;
}
// cudaLaunchKernelEx's configuration, the cluster dimension its only attribute.
struct cudaLaunchAttributeValue { struct { unsigned x, y, z; } clusterDim; };
struct cudaLaunchAttribute { int id; cudaLaunchAttributeValue val; };
struct cudaLaunchConfig_t {
  dim3 gridDim, blockDim;
  size_t dynamicSmemBytes;
  cudaStream_t stream;
  cudaLaunchAttribute* attrs;
  unsigned numAttrs;
};
namespace emu {
struct FuncAttr { const void* f; size_t max_dynamic_smem; };
inline std::vector<FuncAttr> func_attrs;
inline size_t func_max_dynamic_smem(const void* f) {
  for (const FuncAttr& a : func_attrs)
    if (a.f == f) return a.max_dynamic_smem;
  return 48 * 1024;
}
}  // namespace emu
template <class K> int cudaFuncSetAttribute(K kernel, int attr, int value) {
  if constexpr (std::is_pointer_v<K>) {
    if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
      if (value < 0 || value > emu::optin_smem) return cudaErrorInvalidValue;
      const void* f = reinterpret_cast<const void*>(kernel);
      for (emu::FuncAttr& a : emu::func_attrs)
        if (a.f == f) { a.max_dynamic_smem = size_t(value); return cudaSuccess; }
      emu::func_attrs.push_back({f, size_t(value)});
    }
  }
  return cudaSuccess;
}
template <class K> int cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, K, int, size_t) {
  *n = emu::blocks_per_sm;
  return cudaSuccess;
}
inline int cudaGetLastError() { return cudaSuccess; }
inline int cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
inline const char* cudaGetErrorString(int) { return "emulation error"; }
inline int cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) { std::memset(p, v, n); return cudaSuccess; }

// kernel<<<grid, threads, smem_bytes>>>(args...) with the block's work done by `block_threads`
// emulated threads: 1 = the whole block in one thread (every barrier trivially held), 0 = one
// fiber per CUDA thread (what warp collectives and the PTX layer need). Checks what the
// runtime would refuse: block size, empty or oversized grids, dynamic shared memory above 48 KB
// without cudaFuncSetAttribute(MaxDynamicSharedMemorySize) for this kernel, or above the opt-in limit.
// `cluster`: CTAs per cluster along x (cudaLaunchKernelEx; launch_grid runs a cluster's CTAs together).
template <class K, class... A>
void emu_launch_cluster(int block_threads, int cluster, K kernel, dim3 grid, int threads, size_t smem_bytes, A... args) {
  if (threads % 32 || threads > emu::max_block_threads || threads < 32) {
    std::fprintf(stderr, "emu_launch: bad block size %d\n", threads);
    throw "bad block size";
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    std::fprintf(stderr, "emu_launch: invalid grid (%u, %u, %u)\n", grid.x, grid.y, grid.z);
    throw "invalid grid";
  }
  if (smem_bytes > size_t(emu::optin_smem)) {
    std::fprintf(stderr, "emu_launch: %zu bytes of shared memory over the limit %d\n", smem_bytes, emu::optin_smem);
    throw "shared memory over the limit";
  }
  if constexpr (std::is_pointer_v<K>) {
    if (smem_bytes > 48 * 1024 && emu::func_max_dynamic_smem(reinterpret_cast<const void*>(kernel)) < smem_bytes) {
      std::fprintf(stderr, "emu_launch: %zu bytes of dynamic shared memory without cudaFuncSetAttribute to allow them\n",
                   smem_bytes);
      throw "dynamic shared memory above 48 KB not allowed";
    }
  }
  if (cluster < 1 || cluster > 8 || grid.x % unsigned(cluster) || (cluster > 1 && (block_threads != 0 || emu::cc_major < 9))) {
    std::fprintf(stderr, "emu_launch: bad cluster of %d CTAs for grid.x %u\n", cluster, grid.x);
    throw "bad cluster";
  }
  launch_grid(grid, block_threads == 0 ? threads : block_threads, smem_bytes, [&] { kernel(args...); }, cluster);
}
template <class K, class... A>
void emu_launch(int block_threads, K kernel, dim3 grid, int threads, size_t smem_bytes, A... args) {
  emu_launch_cluster(block_threads, 1, kernel, grid, threads, smem_bytes, args...);
}
inline int emu_cluster_of(const cudaLaunchConfig_t* config) {
  int cluster = 1;
  for (unsigned i = 0; i < config->numAttrs; ++i)
    if (config->attrs[i].id == cudaLaunchAttributeClusterDimension) {
      const auto& d = config->attrs[i].val.clusterDim;
      if (d.y != 1 || d.z != 1) emu::fail("cudaLaunchKernelEx: the emulation takes clusters along x only");
      cluster = int(d.x);
    }
  return cluster;
}
// One fiber per CUDA thread; the portable cluster sizes (1-8).
template <class... P, class... A>
int cudaLaunchKernelEx(const cudaLaunchConfig_t* config, void (*kernel)(P...), A&&... args) {
  if (config->blockDim.y != 1 || config->blockDim.z != 1) emu::fail("cudaLaunchKernelEx: 1-D blocks only");
  emu_launch_cluster(0, emu_cluster_of(config), kernel, config->gridDim, int(config->blockDim.x),
                     config->dynamicSmemBytes, P(std::forward<A>(args))...);
  return cudaSuccess;
}
// emu::active_clusters when the cluster's shared memory fits the opt-in limit (else 0).
template <class K> int cudaOccupancyMaxActiveClusters(int* n, K kernel, const cudaLaunchConfig_t* config) {
  const int cluster = emu_cluster_of(config);
  const bool fits = config->dynamicSmemBytes <= size_t(emu::optin_smem) &&
                    (config->dynamicSmemBytes <= 48 * 1024 ||
                     emu::func_max_dynamic_smem(reinterpret_cast<const void*>(kernel)) >= config->dynamicSmemBytes);
  *n = fits && cluster <= 8 && emu::cc_major >= 9 ? emu::active_clusters : 0;
  return cudaSuccess;
}
