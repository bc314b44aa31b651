// The emulator's own check under ThreadSanitizer: does it order exactly what the GPU orders?
//   MMM_EMULATE_SANITIZE=thread tests/emulate/run.sh races CASE
// "ordered" touches shared memory only across __syncthreads / __syncwarp and must run clean.
// Every other case has a race a GPU could show, and TSan must report it (the run fails):
//   block  - a thread reads what a thread of another warp wrote, no barrier between
//   warp   - a lane reads what its neighbour wrote, with only a shuffle between (a shuffle
//            orders no memory on the GPU)
//   phase  - both accesses between the same two barriers, the reader slow to leave the first:
//            the barrier's own synchronisation must not order it after the writer's next arrival
//   cta    - two blocks write one global word without atomics
//   cluster - a CTA reads what the cluster's other CTA stored into its shared memory after
//            arriving at the cluster barrier but before waiting (arrive orders nothing for the
//            arriver's later work); "ordered" also runs the same exchange read after the wait
// and "deadlock", where one thread leaves the kernel while the others wait in a __syncthreads:
// the fiber scheduler must report it at once (in any mode).
// (tests/test_emulation.py runs them when MMM_EMULATE asks for "thread".)
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "ptx_on_cpu.h"

float global_word;  // external linkage: a store nobody in this file reads is still made
// Keeps a value that is never read: on the thread's own stack, so only the shared accesses race.
static void consume(float v) {
  volatile float kept = v;
  (void)kept;
}

static void ordered() {
  float* s = static_cast<float*>(emu::smem);
  const unsigned t = threadIdx.x;
  s[t] = float(t);
  __syncthreads();
  float next = s[(t + 32) % blockDim.x];
  __syncthreads();  // every read of s[t] above before its owner overwrites it
  s[t] = next;
  __syncwarp();
  consume(s[t ^ 1]);
}

static void block_race() {
  float* s = static_cast<float*>(emu::smem);
  const unsigned t = threadIdx.x;
  s[t] = float(t);
  consume(s[(t + 32) % blockDim.x]);
}

static void warp_race() {
  float* s = static_cast<float*>(emu::smem);
  const unsigned t = threadIdx.x;
  s[t] = float(t);
  const float v = __shfl_xor_sync(0xffffffffu, float(t), 1);
  consume(s[t ^ 1] + v);
}

static void phase_race() {
  float* s = static_cast<float*>(emu::smem);
  const unsigned t = threadIdx.x;
  __syncthreads();
  if (t == 1) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // thread 0 has written and arrived
    consume(s[0]);
  }
  if (t == 0) s[0] = 1.f;
  __syncthreads();
}

static void cta_race() {
  if (threadIdx.x == 0) global_word = float(blockIdx.x);
}

// Two CTAs: each stores into the other's shared memory, then reads what the other stored.
static void cluster_exchange(bool wait_first) {
  float* s = static_cast<float*>(emu::smem);
  const unsigned t = threadIdx.x;
  emu::cluster_arrive();  // both CTAs run before either stores into the other
  emu::cluster_wait();
  emu::cluster_store_u32(&s[t], emu::cluster_ctarank() ^ 1u, t);
  emu::cluster_arrive();
  if (wait_first) emu::cluster_wait();
  consume(s[t]);
  if (!wait_first) emu::cluster_wait();
}
static void cluster_ordered() { cluster_exchange(true); }
static void cluster_race() { cluster_exchange(false); }

static void deadlock() {
  if (threadIdx.x != 5) __syncthreads();
}

int main(int argc, char** argv) {
  const std::string which = argc > 1 ? argv[1] : "";
  void (*kernel)() = which == "ordered" ? ordered : which == "block" ? block_race : which == "warp" ? warp_race
                   : which == "phase" ? phase_race : which == "cta" ? cta_race : which == "deadlock" ? deadlock
                   : which == "cluster" ? cluster_race : nullptr;
  if (!kernel) {
    std::fprintf(stderr, "races: ordered | block | warp | phase | cta | cluster | deadlock\n");
    return 2;
  }
  if (which == "cluster")
    emu_launch_cluster(0, 2, kernel, dim3(2), 64, 64 * sizeof(float));
  else
    launch_grid(dim3(which == "cta" ? 2 : 1), 64, 64 * sizeof(float), kernel);
  if (which == "ordered") emu_launch_cluster(0, 2, cluster_ordered, dim3(4), 64, 64 * sizeof(float));
  std::printf("%s: no race reported\n", which.c_str());
  return 0;
}
