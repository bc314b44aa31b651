// How the kernels' plain loads and stores would be served: shared-memory wavefronts (bank
// conflicts) and global-memory sectors (coalescing). ptx_on_cpu.h counts ldmatrix's and
// cp.async's bank conflicts in every mode; this is run.sh's MMM_EMULATE_SANITIZE=counts: the
// kernels' translation units are compiled with GCC's kernel-address instrumentation in outline
// mode, which calls __asan_{load,store}{1,2,4,8,16}_noabort(address) before every memory access
// and leaves the definitions to us (no ASan runtime). The definitions below keep each emulated
// thread's accesses with the calling instruction's address: shared when the address lies in the
// running block's shared memory, global when it lies outside the thread's stack and TLS and
// outside every loaded image's own data (so the device buffers: the driver's heap allocations).
// Access widths are GCC's: float2 / float4 values are copied whole (run.sh adds -fno-tree-sra, or
// GCC would split them into 4-byte loads where nvcc issues one 8- or 16-byte access).
//
// Grouping the threads' accesses into warp instructions: the lanes of a warp run the same code and
// all reach each barrier and collective (__syncthreads, __syncwarp, a shuffle, ldmatrix, mma).
// Between two of them the lanes step through their accesses together: each step is one warp
// instruction at one call site, taken by the lanes whose next access is there. Where lanes are at
// different sites (divergent code), the lowest instruction address goes first with its lanes and
// the others are masked off, the order a SIMT machine runs forward branches in. (A lane that
// skips an access in one loop iteration can then be grouped with another lane's next iteration:
// an approximation the kernels' uniform loops do not meet.)
//
// The hardware model (Volta and later). Shared: 32 banks of 4 bytes, served in 128-byte
// wavefronts; a warp's 4-byte (or narrower) accesses take one wavefront per distinct 4-byte word
// in the busiest bank (the same word is a broadcast); 8-byte accesses go a half warp per wavefront
// and 16-byte ones a quarter warp, each part costing the same count. Each wavefront above one per
// part with an active lane is a bank conflict. Global: an instruction costs one 32-byte sector per
// distinct sector its lanes touch; the ideal is its distinct bytes / 32, rounded up.
// memory_counts_self_test pins both to hand-counted cases.
//
// Judging (at exit): the run fails when a kernel source line averages one or more extra
// wavefronts per shared instruction, or three times the ideal global sectors or more
// (systematic: a stride that maps lanes onto one bank, or lanes that each use a few bytes of
// their own sector), unless that line carries a comment with "known bank conflict" / "known
// uncoalesced" that says why it is accepted. Up to three is let pass: a thread's pair of
// elements or 32 bytes read as two loads costs each instruction twice its sectors, the second
// from L1, and rows that start mid-sector add one. Lower averages (a few instructions
// straddling a boundary, ragged row ends) and the drivers' own set-up code are listed, not
// judged.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <dlfcn.h>
#include <link.h>
#include <pthread.h>

#include "thread_state.h"

namespace emu {

#if defined(MMM_EMU_COUNTS)
inline constexpr bool counting_accesses = true;
#else
inline constexpr bool counting_accesses = false;
#endif

// What is never global: the running thread's shared memory and stack (its ThreadState), its OS
// thread's TLS, every loaded image's segments. Plain arrays, as the callbacks below must not call
// into instrumented code (GCC inlines nothing into a function that is not instrumented).
constexpr int kMaxImageRanges = 256;
inline thread_local uintptr_t tls_begin = 0, tls_end = 0;
inline uintptr_t launcher_stack_begin = 0, launcher_stack_end = 0;  // kernel arguments live there
inline uintptr_t image_begin[kMaxImageRanges], image_end[kMaxImageRanges];
inline int image_range_count = 0;
// Memory a driver hands kernel code as its shared memory (fft.cpp's tests of core/fft.cuh).
inline std::pair<const void*, size_t> driver_shared{nullptr, 0};

// The emulator's own accesses (warp exchanges, barriers, the PTX models, block_static's
// bookkeeping) are not the kernel's.
struct Untraced {
  ThreadState& me = self();
  const bool was = me.tracing;
  Untraced() { me.tracing = false; }
  ~Untraced() { me.tracing = was; }
};

inline void add_shared_range(const void* p, size_t bytes) {
  const auto b = reinterpret_cast<uintptr_t>(p);
  ThreadState& me = self();
  for (int i = 0; i < me.shared_range_count; ++i)
    if (me.shared_begin[i] == b) return;
  if (me.shared_range_count == kMaxSharedRanges) {
    std::fprintf(stderr, "EMULATION ERROR: more than %d shared-memory arrays in a block\n", kMaxSharedRanges);
    std::abort();
  }
  me.shared_begin[me.shared_range_count] = b;
  me.shared_end[me.shared_range_count++] = b + bytes;
}

inline uintptr_t tls_bytes = 0;  // the largest static TLS block of a loaded image
inline void note_images() {
  image_range_count = 0;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void*) {
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const auto& ph = info->dlpi_phdr[i];
          if (ph.p_type == PT_TLS) tls_bytes = std::max<uintptr_t>(tls_bytes, ph.p_memsz);
          if (ph.p_type != PT_LOAD || image_range_count == kMaxImageRanges) continue;
          image_begin[image_range_count] = info->dlpi_addr + ph.p_vaddr;
          image_end[image_range_count] = info->dlpi_addr + ph.p_vaddr + ph.p_memsz;
          ++image_range_count;
        }
        return 0;
      },
      nullptr);
}
// An OS thread that runs kernel code: its TLS (around one of its thread_locals, as far as the
// largest TLS block reaches either way). The first such thread is the launcher, whose stack
// holds the kernel arguments. Returns the thread's stack, [begin, end).
inline std::pair<uintptr_t, uintptr_t> note_thread_memory() {
  pthread_attr_t attr;
  void* base = nullptr;
  size_t size = 0;
  if (pthread_getattr_np(pthread_self(), &attr) == 0) {
    pthread_attr_getstack(&attr, &base, &size);
    pthread_attr_destroy(&attr);
  }
  const auto stack_begin = reinterpret_cast<uintptr_t>(base), stack_end = stack_begin + size;
  if (!launcher_stack_end) launcher_stack_begin = stack_begin, launcher_stack_end = stack_end;
  const auto tls = reinterpret_cast<uintptr_t>(&current_thread);
  tls_begin = tls - tls_bytes - 64;
  tls_end = tls + tls_bytes + 64;
  return {stack_begin, stack_end};
}

__attribute__((no_sanitize_address)) inline void trace_access(uintptr_t a, uint32_t bytes, const void* site) {
  ThreadState* const me = current_thread;  // not self(): that is instrumented code
  if (!me || !me->tracing) return;
  bool global = true;
  for (int i = 0; i < me->shared_range_count; ++i)
    if (a >= me->shared_begin[i] && a < me->shared_end[i]) {
      global = false;
      break;
    }
  if (global) {
    if ((a >= me->stack_begin && a < me->stack_end) || (a >= tls_begin && a < tls_end) ||
        (a >= launcher_stack_begin && a < launcher_stack_end))
      return;
    for (int i = 0; i < image_range_count; ++i)
      if (a >= image_begin[i] && a < image_end[i]) return;
  }
  me->tracing = false;  // push_back's own accesses are instrumented: no recursion
  me->access_trace.accesses.push_back({a, site, bytes, global});
  me->tracing = true;
}
inline void trace_sync_point() {
  if (counting_accesses) {
    AccessTrace& trace = self().access_trace;
    trace.syncs.push_back(trace.accesses.size());
  }
}

// Counts over analysed blocks. Shared: wavefronts against parts (one per served group of lanes).
// Global: sectors against the ideal sectors.
struct AccessTally {
  uint64_t instructions = 0, partial = 0, cost = 0, ideal = 0;
  uint64_t excess() const { return cost - ideal; }
  void add(const AccessTally& o) {
    instructions += o.instructions, partial += o.partial, cost += o.cost, ideal += o.ideal;
  }
};
struct SiteCount {
  bool global = false;
  uint64_t instructions = 0, cost = 0, ideal = 0;
};
struct AccessStats {
  AccessTally shared, global;
  uint64_t unchecked = 0;  // accesses of lanes whose barrier counts disagree, or wider than 16 bytes
  std::map<const void*, SiteCount> sites;
  std::string summary() const {
    char s[400];
    std::snprintf(s, sizeof s, "shared: %llu instructions (%llu with lanes masked off), %llu wavefronts for %llu "
                  "(%llu bank conflicts); global: %llu instructions (%llu with lanes masked off), %llu sectors for "
                  "%llu ideal; %llu accesses unchecked", (unsigned long long)shared.instructions,
                  (unsigned long long)shared.partial, (unsigned long long)shared.cost, (unsigned long long)shared.ideal,
                  (unsigned long long)shared.excess(), (unsigned long long)global.instructions,
                  (unsigned long long)global.partial, (unsigned long long)global.cost, (unsigned long long)global.ideal,
                  (unsigned long long)unchecked);
    return s;
  }
};
inline std::mutex access_stats_mutex;
inline AccessStats all_accesses;  // what the report at exit judges
// Where the analysis adds: a driver points it at a count of its own around launches whose
// conflicts are deliberate (fft.cpp's unswizzled layout) and judges that itself.
inline AccessStats* access_stats = &all_accesses;

// The throughput model's raw data, per launch (launch_grid): the on-chip work and the global
// traffic of its blocks, and a few of its access sites (which name the kernel in the report).
struct LaunchCost {
  const void* sites[32] = {};
  uint64_t shared_wavefronts = 0, shuffles = 0, global_bytes = 0;  // bytes: ideal sectors * 32
  uint64_t mmas = 0, ptx_wavefronts = 0;  // warp mma instructions; ldmatrix + cp.async store wavefronts
};
inline LaunchCost current_launch;           // under access_stats_mutex
inline std::vector<LaunchCost> launch_costs;  // every launch so far
inline std::atomic<uint64_t> launch_shuffles{0};  // warp shuffle instructions (lane 0 counts)
inline std::atomic<uint64_t> launch_mmas{0};           // warp mma instructions (lane 0 counts)
inline std::atomic<uint64_t> launch_ptx_wavefronts{0};  // ldmatrix and cp.async stores (ptx_on_cpu.h)
inline void end_launch_cost() {
  std::lock_guard<std::mutex> lock(access_stats_mutex);
  current_launch.shuffles = launch_shuffles.exchange(0);
  current_launch.mmas = launch_mmas.exchange(0);
  current_launch.ptx_wavefronts = launch_ptx_wavefronts.exchange(0);
  launch_costs.push_back(current_launch);
  current_launch = {};
}

// Wavefronts of one shared-memory warp instruction: addr[l] for the lanes with active[l], all
// `bytes` wide; *parts gets the groups of lanes served (one wavefront each without conflicts).
inline uint64_t shared_wavefronts(const uintptr_t* addr, const bool* active, int lanes, uint32_t bytes,
                                  uint64_t* parts) {
  const int per_part = bytes <= 4 ? 32 : bytes == 8 ? 16 : 8;
  uint64_t total = 0;
  for (int first = 0; first < lanes; first += per_part) {
    uintptr_t words[32][32];
    int count[32] = {}, worst = 0;
    for (int l = first; l < std::min(lanes, first + per_part); ++l)
      for (uintptr_t w = addr[l] / 4; active[l] && w < (addr[l] + bytes + 3) / 4; ++w) {
        const int bank = int(w % 32);
        if (std::find(words[bank], words[bank] + count[bank], w) != words[bank] + count[bank]) continue;
        words[bank][count[bank]++] = w;
        worst = std::max(worst, count[bank]);
      }
    if (worst) {
      total += uint64_t(worst);
      ++*parts;
    }
  }
  return total;
}
// 32-byte sectors of one global-memory warp instruction; *ideal gets its distinct bytes / 32.
inline uint64_t global_sectors(const uintptr_t* addr, const bool* active, int lanes, uint32_t bytes, uint64_t* ideal) {
  std::pair<uintptr_t, uintptr_t> spans[32];
  int n = 0;
  for (int l = 0; l < lanes; ++l)
    if (active[l]) spans[n++] = {addr[l], addr[l] + bytes};
  std::sort(spans, spans + n);
  uint64_t sectors = 0, unique = 0;
  uintptr_t covered = 0, last_sector = ~uintptr_t(0);  // bytes below `covered` are counted
  for (int i = 0; i < n; ++i) {
    const uintptr_t from = std::max(spans[i].first, covered), to = spans[i].second;
    if (to <= from) continue;
    unique += to - from;
    for (uintptr_t s = from / 32; s <= (to - 1) / 32; ++s)
      if (s != last_sector) ++sectors, last_sector = s;
    covered = to;
  }
  *ideal = (unique + 31) / 32;
  return sectors;
}

// Thread 0 at the end of a block, every thread's trace complete: each warp's instructions.
// Between two sync points the lanes step through their accesses together; where they are at
// different call sites (divergent code), the lowest instruction address goes first with the lanes
// that are at it, the others masked off (the order a SIMT machine runs forward branches in).
inline void analyse_accesses(const std::vector<AccessTrace>& traces) {
  AccessStats t;
  for (size_t w = 0; w < traces.size(); w += 32) {
    const int lanes = int(std::min<size_t>(32, traces.size() - w));
    const AccessTrace* lane = &traces[w];
    bool same_syncs = true;
    for (int l = 1; l < lanes; ++l) same_syncs = same_syncs && lane[l].syncs.size() == lane[0].syncs.size();
    if (!same_syncs) {  // not expected: a warp's lanes meet at every barrier and collective
      for (int l = 0; l < lanes; ++l) t.unchecked += lane[l].accesses.size();
      continue;
    }
    for (size_t s = 0; s <= lane[0].syncs.size(); ++s) {
      size_t at[32], end[32];
      for (int l = 0; l < lanes; ++l) {
        const AccessTrace& tr = lane[l];
        at[l] = s ? tr.syncs[s - 1] : 0;
        end[l] = s < tr.syncs.size() ? tr.syncs[s] : tr.accesses.size();
      }
      for (;;) {
        const void* site = nullptr;
        for (int l = 0; l < lanes; ++l)
          if (at[l] < end[l] && (!site || lane[l].accesses[at[l]].site < site)) site = lane[l].accesses[at[l]].site;
        if (!site) break;
        uintptr_t addr[32];
        bool active[32];
        uint32_t bytes = 0;
        bool global = false;
        int n_active = 0;
        for (int l = 0; l < lanes; ++l) {
          active[l] = at[l] < end[l] && lane[l].accesses[at[l]].site == site;
          if (!active[l]) continue;
          const Access& a = lane[l].accesses[at[l]++];
          addr[l] = a.addr, bytes = a.bytes, global = a.global;
          ++n_active;
        }
        if (bytes > 16) {  // a wide aggregate copy: not one instruction on the GPU either
          t.unchecked += uint64_t(n_active);
          continue;
        }
        uint64_t ideal = 0;
        const uint64_t cost = global ? global_sectors(addr, active, lanes, bytes, &ideal)
                                     : shared_wavefronts(addr, active, lanes, bytes, &ideal);
        AccessTally& kind = global ? t.global : t.shared;
        kind.add({1, n_active < lanes, cost, ideal});
        SiteCount& c = t.sites[site];
        c.global = global;
        ++c.instructions;
        c.cost += cost;
        c.ideal += ideal;
      }
    }
  }
  std::lock_guard<std::mutex> lock(access_stats_mutex);
  current_launch.shared_wavefronts += t.shared.cost;
  current_launch.global_bytes += 32 * t.global.ideal;
  if (!current_launch.sites[0]) {  // the first block's lowest and highest sites: some are in the kernel itself
    int i = 0, rank = 0;
    for (auto it = t.sites.begin(); it != t.sites.end(); ++it, ++rank)
      if (rank < 16 || rank >= int(t.sites.size()) - 16) current_launch.sites[i++] = it->first;
  }
  AccessStats& out = *access_stats;
  out.shared.add(t.shared);
  out.global.add(t.global);
  out.unchecked += t.unchecked;
  for (const auto& [site, c] : t.sites) {
    SiteCount& all = out.sites[site];
    all.global = c.global;
    all.instructions += c.instructions;
    all.cost += c.cost;
    all.ideal += c.ideal;
  }
}

// Where an instruction lies in the source: addr2line's inline chain on the executable, innermost
// first ("?" without it), and what the innermost line says about itself.
struct SourceLine {
  std::string chain;        // "fft/fft_kernel.cuh:140 <- ...", paths from csrc/ (or run.sh's copy of it)
  bool kernel = false;      // innermost in kernel code (csrc/), not in a driver's own set-up code
  bool known = false;       // that line's comment accepts the finding ("known bank conflict" / "known uncoalesced")
};
inline bool line_says(const std::string& file, long line, const char* what) {
  FILE* f = std::fopen(file.c_str(), "r");
  if (!f) return false;
  char buf[4096];
  bool says = false;
  for (long i = 1; std::fgets(buf, sizeof buf, f); ++i)
    if (i == line) {
      says = std::strstr(buf, what) != nullptr;
      break;
    }
  std::fclose(f);
  return says;
}
// addr2line's output for an instruction of a loaded image (`flags`: "-i", "-f -C -i"), a line
// each; empty where dladdr or addr2line cannot place it.
inline std::vector<std::string> addr2line(const void* site, const char* flags) {
  std::vector<std::string> lines;
  Dl_info info;
  if (!dladdr(site, &info) || !info.dli_fname) return lines;
  char cmd[512];
  std::snprintf(cmd, sizeof cmd, "addr2line %s -e '%s' 0x%zx 2>/dev/null", flags, info.dli_fname,
                size_t(static_cast<const char*>(site) - static_cast<const char*>(info.dli_fbase)) - 1);
  if (FILE* p = popen(cmd, "r")) {
    char buf[4096];
    while (std::fgets(buf, sizeof buf, p)) {
      lines.emplace_back(buf);
      if (!lines.back().empty() && lines.back().back() == '\n') lines.back().pop_back();
    }
    pclose(p);
  }
  return lines;
}
inline SourceLine source_line(const void* site, const char* marker) {
  SourceLine where{"?"};
  std::string out;
  bool innermost = true;
  for (std::string s : addr2line(site, "-i")) {
    if (const size_t end = s.find(' '); end != std::string::npos) s.resize(end);  // drop "(discriminator n)"
    const size_t colon = s.rfind(':');
    for (const char* root : {"/csrc/", "/inc/", "/tests/emulate/"})  // the repository's or run.sh's copy
      if (const size_t at = s.rfind(root); at != std::string::npos) {
        if (innermost) {
          where.kernel = std::strcmp(root, "/tests/emulate/") != 0;
          if (colon != std::string::npos)
            where.known = line_says(s.substr(0, colon), std::atol(s.c_str() + colon + 1), marker);
        }
        s = s.substr(at + std::strlen(root));
        break;
      }
    out += (out.empty() ? "" : " <- ") + s;
    innermost = false;
  }
  if (!out.empty()) where.chain = out;
  return where;
}

// Prints the tallies and every source line that costs more than ideal (most first); returns
// false when a kernel line is systematic (see the header) and not marked as known.
inline bool report_accesses(FILE* f, const char* what, const AccessStats& stats) {
  std::lock_guard<std::mutex> lock(access_stats_mutex);
  std::fprintf(f, "%s: %s\n", what, stats.summary().c_str());
  std::map<std::string, std::pair<SourceLine, SiteCount>> lines;
  for (const auto& [site, c] : stats.sites)
    if (c.cost > c.ideal) {
      const SourceLine where = source_line(site, c.global ? "known uncoalesced" : "known bank conflict");
      auto& [w, l] = lines[(c.global ? "global " : "shared ") + where.chain];
      w = where;
      l.global = c.global;
      l.instructions += c.instructions;
      l.cost += c.cost;
      l.ideal += c.ideal;
    }
  std::vector<std::pair<SourceLine, SiteCount>> worst;
  for (const auto& [key, entry] : lines) worst.push_back(entry);
  const auto excess = [](const SiteCount& c) { return double(c.cost - c.ideal) / double(c.instructions); };
  std::sort(worst.begin(), worst.end(), [&](const auto& a, const auto& b) { return excess(a.second) > excess(b.second); });
  bool ok = true;
  for (const auto& [where, c] : worst) {
    const bool systematic = c.global ? c.cost >= 3 * c.ideal : c.cost - c.ideal >= c.instructions;
    const char* verdict = !where.kernel ? "driver code: " : !systematic ? "" : where.known ? "known: " : "SYSTEMATIC: ";
    ok = ok && (!where.kernel || !systematic || where.known);
    if (c.global)
      std::fprintf(f, "  %sglobal: %.2f sectors per instruction for %.2f ideal (%llu instructions) at %s\n", verdict,
                   double(c.cost) / double(c.instructions), double(c.ideal) / double(c.instructions),
                   (unsigned long long)c.instructions, where.chain.c_str());
    else
      std::fprintf(f, "  %sshared: %.2f extra wavefronts per instruction (%llu instructions) at %s\n", verdict,
                   excess(c), (unsigned long long)c.instructions, where.chain.c_str());
  }
  return ok;
}

// The function an instruction is in: the outermost frame of addr2line's inline chain that lies in
// csrc/ (or run.sh's copy of it), as a demangled name; "" for driver code.
inline std::string kernel_of(const void* site) {
  const std::vector<std::string> lines = addr2line(site, "-f -C -i");  // (function, file:line) pairs
  std::string name;
  for (size_t i = 0; i + 1 < lines.size(); i += 2)
    if (lines[i + 1].find("/csrc/") != std::string::npos || lines[i + 1].find("/inc/") != std::string::npos)
      name = lines[i];
  if (const size_t paren = name.rfind('('); paren != std::string::npos) name.resize(paren);  // drop the parameters
  return name;
}

// The throughput model: per kernel, its launches' on-chip work against what it must wait for, in
// an H100 SM's clocks. Shared memory serves one 128-byte wavefront per clock and the shuffle unit
// 32 values (one warp instruction) per clock.
// - Memory-bound kernels: on-chip work against global traffic. HBM serves 3.35 TB/s / 132 SMs /
//   1.755 GHz = 14.5 bytes per clock. Global traffic is each instruction's distinct bytes in whole
//   sectors (what reaches DRAM once L1 and L2 merge neighbouring instructions; L2 hits count too,
//   so it is an upper bound). A kernel whose on-chip clocks exceed its HBM clocks cannot reach
//   more than HBM / on-chip of the copy bandwidth however well its loads overlap; one below 1 can,
//   if they do.
// - Tensor-core kernels (mma): shared-memory clocks (ldmatrix, cp.async stores, plain accesses,
//   shuffles) per m16n8k16. At H100's dense fp16 peak (989 TFLOP/s) an SM retires one m16n8k16
//   (4096 flops) per clock, and mma.sync reaches at best about two thirds of that, so a kernel
//   above ~1.5 waits on shared memory, not on the tensor cores.
// The drivers' shapes are small test cases, not the benchmarks' (edge tiles weigh more).
inline void report_throughput_model(FILE* f) {
  std::lock_guard<std::mutex> lock(access_stats_mutex);
  struct Sum {
    uint64_t launches = 0, shared = 0, shuffles = 0, bytes = 0, mmas = 0;
  };
  std::map<std::string, Sum> memory_bound, tensor_core;
  std::map<const void*, std::string> names;
  for (const LaunchCost& c : launch_costs) {
    if (!c.mmas && !c.global_bytes) continue;
    std::string name;  // the first of the sites' functions that is a kernel (csrc names them *_kernel)
    for (const void* site : c.sites) {
      if (!site) break;
      auto [it, fresh] = names.try_emplace(site);
      if (fresh) it->second = kernel_of(site);
      if (it->second.find("_kernel") != std::string::npos) {
        name = it->second;
        break;
      }
    }
    if (name.empty()) continue;
    Sum& k = (c.mmas ? tensor_core : memory_bound)[name];
    ++k.launches, k.shared += c.shared_wavefronts + c.ptx_wavefronts, k.shuffles += c.shuffles;
    k.bytes += c.global_bytes, k.mmas += c.mmas;
  }
  auto short_name = [](const std::string& n) { return n.size() > 110 ? n.substr(0, 107) + "..." : n; };
  if (!memory_bound.empty())
    std::fprintf(f, "throughput model (H100 SM clocks; on-chip = shared wavefronts + warp shuffles; HBM = global "
                    "bytes at 14.5 B/clock):\n");
  for (const auto& [name, k] : memory_bound) {
    const double on_chip = double(k.shared + k.shuffles), hbm = double(k.bytes) / 14.5;
    const double ratio = on_chip / hbm;
    std::fprintf(f, "  %6.2f on-chip/HBM %s (%llu launches: %llu wavefronts, %llu shuffles, %llu KB)%s\n", ratio,
                 short_name(name).c_str(), (unsigned long long)k.launches, (unsigned long long)k.shared,
                 (unsigned long long)k.shuffles, (unsigned long long)(k.bytes >> 10), ratio > 1 ? "  <- bound on chip" : "");
  }
  if (!tensor_core.empty())
    std::fprintf(f, "throughput model, tensor-core kernels (shared-memory clocks = ldmatrix + cp.async + plain "
                    "wavefronts + shuffles, per m16n8k16; an H100 SM retires at most ~0.67 mma.sync per clock):\n");
  for (const auto& [name, k] : tensor_core) {
    const double ratio = double(k.shared + k.shuffles) / double(k.mmas);
    std::fprintf(f, "  %6.2f shared clocks/mma %s (%llu launches: %llu mma, %llu wavefronts, %llu shuffles)%s\n", ratio,
                 short_name(name).c_str(), (unsigned long long)k.launches, (unsigned long long)k.mmas,
                 (unsigned long long)k.shared, (unsigned long long)k.shuffles,
                 ratio > 1.5 ? "  <- bound on shared memory" : "");
  }
}

// The models against hand-counted cases: run once at start-up in counts mode.
inline void memory_counts_self_test() {
  using P = std::pair<uint64_t, uint64_t>;  // (cost, ideal)
  auto count = [](bool global, auto addr_of, int lanes, uint32_t bytes) {
    uintptr_t addr[32];
    bool active[32];
    for (int l = 0; l < 32; ++l) {
      addr[l] = 4096 + uintptr_t(addr_of(l));
      active[l] = l < lanes;
    }
    uint64_t ideal = 0;
    const uint64_t c = global ? global_sectors(addr, active, 32, bytes, &ideal)
                              : shared_wavefronts(addr, active, 32, bytes, &ideal);
    return P(c, ideal);
  };
  const bool S = false, G = true;
  const bool ok =
      count(S, [](int l) { return 4 * l; }, 32, 4) == P(1, 1) &&          // consecutive floats
      count(S, [](int l) { return 0 * l; }, 32, 4) == P(1, 1) &&          // one word: a broadcast
      count(S, [](int l) { return 32 * l; }, 32, 4) == P(8, 1) &&         // stride 8 floats: 8-way
      count(S, [](int l) { return 128 * l; }, 32, 4) == P(32, 1) &&       // stride 32 floats: 32-way
      count(S, [](int l) { return 8 * l; }, 32, 4) == P(2, 1) &&          // stride 2 floats: 2-way
      count(S, [](int l) { return 4 * (l ^ 1); }, 32, 4) == P(1, 1) &&    // any permutation of 32 words
      count(S, [](int l) { return 8 * l; }, 32, 8) == P(2, 2) &&          // consecutive float2: a half warp each
      count(S, [](int l) { return 16 * l; }, 32, 8) == P(4, 2) &&         // float2 at stride 16 bytes: 2-way
      count(S, [](int l) { return 16 * l; }, 32, 16) == P(4, 4) &&        // consecutive float4: a quarter each
      count(S, [](int l) { return 32 * l; }, 32, 16) == P(8, 4) &&        // float4 at stride 32 bytes: 2-way
      count(S, [](int l) { return 8 * l; }, 8, 8) == P(1, 1) &&           // 8 lanes active: one part
      count(S, [](int l) { return 2 * l; }, 32, 2) == P(1, 1) &&          // 16-bit values share words
      count(G, [](int l) { return 4 * l; }, 32, 4) == P(4, 4) &&          // 128 contiguous bytes
      count(G, [](int l) { return 16 * l; }, 32, 16) == P(16, 16) &&      // 512 contiguous bytes
      count(G, [](int l) { return 4 * l + 16; }, 32, 4) == P(5, 4) &&     // misaligned by 16: one more
      count(G, [](int l) { return 0 * l; }, 32, 4) == P(1, 1) &&          // one word for all
      count(G, [](int l) { return 8 * l; }, 32, 4) == P(8, 4) &&          // stride 2 floats: half wasted
      count(G, [](int l) { return 256 * l; }, 32, 8) == P(32, 8) &&       // a sector per lane
      count(G, [](int l) { return 2 * l; }, 16, 2) == P(1, 1);            // 16 halves: one sector
  if (!ok) {
    std::fprintf(stderr, "EMULATION ERROR: memory_counts.h disagrees with its hand-counted cases\n");
    std::abort();
  }
}

#if defined(MMM_EMU_COUNTS)
// Every counts-mode run checks the models first and ends with the count: the run fails when a
// source line is systematically costly (drivers may check more).
inline const bool memory_count_report_at_exit = [] {
  memory_counts_self_test();
  note_images();
  note_thread_memory();
  std::atexit([] {
    report_throughput_model(stdout);
    if (!report_accesses(stdout, "memory counts (plain loads and stores)", all_accesses)) {
      std::fprintf(stdout, "FAILED: systematic bank conflicts or uncoalesced accesses (above)\n");
      std::fflush(stdout);
      std::_Exit(1);
    }
  });
  return true;
}();
#endif

}  // namespace emu

#if defined(MMM_EMU_COUNTS)
// GCC's kernel-address instrumentation, outline mode (run.sh): the callbacks it emits.
#define MMM_EMU_ACCESS_HOOK(kind, n)                                                                   \
  extern "C" __attribute__((weak, no_sanitize_address)) void __asan_##kind##n##_noabort(uintptr_t a) { \
    emu::trace_access(a, n, __builtin_return_address(0));                                              \
  }
MMM_EMU_ACCESS_HOOK(load, 1)
MMM_EMU_ACCESS_HOOK(load, 2)
MMM_EMU_ACCESS_HOOK(load, 4)
MMM_EMU_ACCESS_HOOK(load, 8)
MMM_EMU_ACCESS_HOOK(load, 16)
MMM_EMU_ACCESS_HOOK(store, 1)
MMM_EMU_ACCESS_HOOK(store, 2)
MMM_EMU_ACCESS_HOOK(store, 4)
MMM_EMU_ACCESS_HOOK(store, 8)
MMM_EMU_ACCESS_HOOK(store, 16)
#undef MMM_EMU_ACCESS_HOOK
extern "C" __attribute__((weak, no_sanitize_address)) void __asan_loadN_noabort(uintptr_t a, size_t n) {
  emu::trace_access(a, uint32_t(n), __builtin_return_address(0));
}
extern "C" __attribute__((weak, no_sanitize_address)) void __asan_storeN_noabort(uintptr_t a, size_t n) {
  emu::trace_access(a, uint32_t(n), __builtin_return_address(0));
}
// The rest of the interface, which this use does not need.
extern "C" __attribute__((weak)) void __asan_handle_no_return() {}
extern "C" __attribute__((weak)) void __asan_before_dynamic_init(const char*) {}
extern "C" __attribute__((weak)) void __asan_after_dynamic_init() {}
#endif
