// Bank conflicts of the kernels' ordinary shared-memory loads and stores (ptx_on_cpu.h counts
// ldmatrix's and cp.async's). Built by run.sh with MMM_EMULATE_SANITIZE=banks: the kernels'
// translation units are compiled with GCC's kernel-address instrumentation in outline mode, which
// calls __asan_{load,store}{1,2,4,8,16}_noabort(address) before every memory access and leaves the
// definitions to us (no ASan runtime). The definitions below keep each emulated thread's accesses
// that fall into the running block's shared memory, with the calling instruction's address.
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
// The hardware model (Volta and later): 32 banks of 4 bytes, served in 128-byte wavefronts. A
// warp's 4-byte (or narrower) accesses take one wavefront per distinct 4-byte word in the busiest
// bank (the same word is a broadcast); 8-byte accesses go a half warp per wavefront and 16-byte
// ones a quarter warp, each part costing the same count. Each wavefront above one per part with
// an active lane is a bank conflict. shared_banks_self_test pins the count to hand-counted cases.
//
// Judging: the run fails when a kernel source line averages one or more extra wavefronts per
// instruction (systematic: a stride that maps lanes onto one bank) unless that line carries a
// comment with "known bank conflict" that says why it is accepted; lower averages (a few
// instructions straddling a boundary) and the drivers' own set-up code are listed, not judged.
#pragma once
#include <algorithm>
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

namespace emu {

struct SharedAccess {
  uintptr_t addr;
  const void* site;  // the instruction after the instrumentation call: names the source line
  uint32_t bytes;
};
// One emulated thread's shared accesses in one block, and where its barriers / collectives fell.
struct SharedTrace {
  std::vector<SharedAccess> accesses;
  std::vector<size_t> syncs;  // accesses.size() at each
};

#if defined(MMM_EMU_BANKS)
inline constexpr bool tracing_shared_banks = true;
#else
inline constexpr bool tracing_shared_banks = false;
#endif

inline thread_local SharedTrace shared_trace;
inline thread_local bool shared_tracing = false;  // inside a kernel body, outside the emulator's own code
// The block's shared memory, [begin, end) each, kept in every mode (ptx_on_cpu.h's check_shared
// reads them too): plain arrays, as the callbacks below must not call into instrumented code (GCC
// inlines nothing into a function that is not instrumented).
constexpr int kMaxSharedRanges = 16;
inline thread_local uintptr_t shared_begin[kMaxSharedRanges], shared_end[kMaxSharedRanges];
inline thread_local int shared_range_count = 0;
// Memory a driver hands kernel code as its shared memory (fft.cpp's tests of core/fft.cuh).
inline std::pair<const void*, size_t> driver_shared{nullptr, 0};

// The emulator's own accesses (the PTX models, block_static's bookkeeping) are not the kernel's.
struct Untraced {
  const bool was = shared_tracing;
  Untraced() { shared_tracing = false; }
  ~Untraced() { shared_tracing = was; }
};

inline void add_shared_range(const void* p, size_t bytes) {
  const auto b = reinterpret_cast<uintptr_t>(p);
  for (int i = 0; i < shared_range_count; ++i)
    if (shared_begin[i] == b) return;
  if (shared_range_count == kMaxSharedRanges) {
    std::fprintf(stderr, "EMULATION ERROR: more than %d shared-memory arrays in a block\n", kMaxSharedRanges);
    std::abort();
  }
  shared_begin[shared_range_count] = b;
  shared_end[shared_range_count++] = b + bytes;
}

__attribute__((no_sanitize_address)) inline void trace_shared(uintptr_t a, uint32_t bytes, const void* site) {
  if (!shared_tracing) return;
  for (int i = 0; i < shared_range_count; ++i)
    if (a >= shared_begin[i] && a < shared_end[i]) {
      shared_tracing = false;  // push_back's own accesses are instrumented: no recursion
      shared_trace.accesses.push_back({a, site, bytes});
      shared_tracing = true;
      return;
    }
}
inline void shared_sync_point() {
  if (tracing_shared_banks) shared_trace.syncs.push_back(shared_trace.accesses.size());
}

// The count over every analysed block, and the extra wavefronts per call site.
struct SharedBankTally {
  uint64_t instructions = 0, partial = 0, wavefronts = 0, parts = 0, unchecked = 0;
  uint64_t conflicts() const { return wavefronts - parts; }
  SharedBankTally operator-(const SharedBankTally& o) const {
    return {instructions - o.instructions, partial - o.partial, wavefronts - o.wavefronts, parts - o.parts,
            unchecked - o.unchecked};
  }
  std::string summary() const {
    char s[240];
    std::snprintf(s, sizeof s, "%llu shared-memory instructions (%llu with lanes masked off), %llu wavefronts for %llu "
                  "(%llu conflicts), %llu accesses unchecked", (unsigned long long)instructions,
                  (unsigned long long)partial, (unsigned long long)wavefronts, (unsigned long long)parts,
                  (unsigned long long)conflicts(), (unsigned long long)unchecked);
    return s;
  }
};
struct SiteCount { uint64_t instructions = 0, extra = 0; };
// A count: a total and the extra wavefronts per call site.
struct SharedBankStats {
  SharedBankTally tally;
  std::map<const void*, SiteCount> sites;
};
inline std::mutex shared_banks_mutex;
inline SharedBankStats shared_banks;  // what the report at exit judges
// Where the analysis adds: a driver points it at a count of its own around launches whose
// conflicts are deliberate (fft.cpp's unswizzled layout) and judges that itself.
inline SharedBankStats* shared_bank_stats = &shared_banks;

inline SharedBankTally shared_bank_tally() {
  std::lock_guard<std::mutex> lock(shared_banks_mutex);
  return shared_bank_stats->tally;
}

// Wavefronts of one warp instruction: addr[l] for the lanes with active[l], all `bytes` wide.
inline uint64_t instruction_wavefronts(const uintptr_t* addr, const bool* active, int lanes, uint32_t bytes,
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

// Thread 0 at the end of a block, every thread's trace complete: each warp's instructions.
// Between two sync points the lanes step through their accesses together; where they are at
// different call sites (divergent code), the lowest instruction address goes first with the lanes
// that are at it, the others masked off (the order a SIMT machine runs forward branches in).
inline void analyse_shared_banks(const std::vector<SharedTrace>& traces) {
  SharedBankTally t;
  std::map<const void*, SiteCount> sites;
  for (size_t w = 0; w < traces.size(); w += 32) {
    const int lanes = int(std::min<size_t>(32, traces.size() - w));
    const SharedTrace* lane = &traces[w];
    bool same_syncs = true;
    for (int l = 1; l < lanes; ++l) same_syncs = same_syncs && lane[l].syncs.size() == lane[0].syncs.size();
    if (!same_syncs) {  // not expected: a warp's lanes meet at every barrier and collective
      for (int l = 0; l < lanes; ++l) t.unchecked += lane[l].accesses.size();
      continue;
    }
    for (size_t s = 0; s <= lane[0].syncs.size(); ++s) {
      size_t at[32], end[32];
      for (int l = 0; l < lanes; ++l) {
        const SharedTrace& tr = lane[l];
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
        int n_active = 0;
        for (int l = 0; l < lanes; ++l) {
          active[l] = at[l] < end[l] && lane[l].accesses[at[l]].site == site;
          if (!active[l]) continue;
          addr[l] = lane[l].accesses[at[l]].addr;
          bytes = lane[l].accesses[at[l]++].bytes;
          ++n_active;
        }
        if (bytes > 16) {  // a wide aggregate copy: not one instruction on the GPU either
          t.unchecked += uint64_t(n_active);
          continue;
        }
        uint64_t parts = 0;
        const uint64_t waves = instruction_wavefronts(addr, active, lanes, bytes, &parts);
        ++t.instructions;
        t.partial += n_active < lanes;
        t.wavefronts += waves;
        t.parts += parts;
        SiteCount& c = sites[site];
        ++c.instructions;
        c.extra += waves - parts;
      }
    }
  }
  std::lock_guard<std::mutex> lock(shared_banks_mutex);
  SharedBankStats& out = *shared_bank_stats;
  out.tally.instructions += t.instructions;
  out.tally.partial += t.partial;
  out.tally.wavefronts += t.wavefronts;
  out.tally.parts += t.parts;
  out.tally.unchecked += t.unchecked;
  for (const auto& [site, c] : sites) {
    SiteCount& all = out.sites[site];
    all.instructions += c.instructions;
    all.extra += c.extra;
  }
}

// Where an instruction lies in the source: addr2line's inline chain on the executable, innermost
// first ("?" without it), and what the innermost line says about itself.
struct SourceLine {
  std::string chain;        // "fft/fft_kernel.cuh:140 <- ...", paths from csrc/ (or run.sh's copy of it)
  bool kernel = false;      // innermost in kernel code (csrc/), not in a driver's own set-up code
  bool known = false;       // that line carries a "known bank conflict" comment saying why
};
inline bool line_is_marked(const std::string& file, long line) {
  FILE* f = std::fopen(file.c_str(), "r");
  if (!f) return false;
  char buf[4096];
  bool marked = false;
  for (long i = 1; std::fgets(buf, sizeof buf, f); ++i)
    if (i == line) {
      marked = std::strstr(buf, "known bank conflict") != nullptr;
      break;
    }
  std::fclose(f);
  return marked;
}
inline SourceLine source_line(const void* site) {
  SourceLine where{"?"};
  Dl_info info;
  if (!dladdr(site, &info) || !info.dli_fname) return where;
  char cmd[512];
  std::snprintf(cmd, sizeof cmd, "addr2line -i -e '%s' 0x%zx 2>/dev/null", info.dli_fname,
                size_t(static_cast<const char*>(site) - static_cast<const char*>(info.dli_fbase)) - 1);
  std::string out;
  if (FILE* p = popen(cmd, "r")) {
    char buf[512];
    for (bool innermost = true; std::fgets(buf, sizeof buf, p); innermost = false) {
      std::string s(buf);
      if (const size_t end = s.find_first_of(" \n"); end != std::string::npos) s.resize(end);  // drop "(discriminator n)"
      const size_t colon = s.rfind(':');
      for (const char* root : {"/csrc/", "/inc/", "/tests/emulate/"})  // the repository's or run.sh's copy
        if (const size_t at = s.rfind(root); at != std::string::npos) {
          if (innermost) {
            where.kernel = std::strcmp(root, "/tests/emulate/") != 0;
            if (colon != std::string::npos) where.known = line_is_marked(s.substr(0, colon), std::atol(s.c_str() + colon + 1));
          }
          s = s.substr(at + std::strlen(root));
          break;
        }
      out += (out.empty() ? "" : " <- ") + s;
    }
    pclose(p);
  }
  if (!out.empty()) where.chain = out;
  return where;
}

// Prints the tally and every source line with conflicts (extra wavefronts per instruction, most
// first); returns false when a kernel line has one or more on average and no comment on it that
// says "known bank conflict" and why. One or more on average is systematic (a stride that maps
// lanes onto one bank); lines below that have a few instructions that straddle a boundary (the
// rfft bins k and n - k of a warp whose first lane's partner lies in the next group of 32).
// The drivers' own set-up code (tests/emulate) is listed, not judged.
inline bool report_shared_banks(FILE* f, const char* what, const SharedBankStats& stats) {
  std::lock_guard<std::mutex> lock(shared_banks_mutex);
  std::fprintf(f, "%s: %s\n", what, stats.tally.summary().c_str());
  std::map<std::string, std::pair<SourceLine, SiteCount>> lines;
  for (const auto& [site, c] : stats.sites)
    if (c.extra) {
      const SourceLine where = source_line(site);
      auto& [w, l] = lines[where.chain];
      w = where;
      l.instructions += c.instructions;
      l.extra += c.extra;
    }
  std::vector<std::pair<SourceLine, SiteCount>> bad;
  for (const auto& [chain, entry] : lines) bad.push_back(entry);
  std::sort(bad.begin(), bad.end(), [](const auto& a, const auto& b) { return a.second.extra > b.second.extra; });
  bool ok = true;
  for (const auto& [where, c] : bad) {
    const double per = double(c.extra) / double(c.instructions);
    const char* verdict = !where.kernel ? "driver code: " : per < 1.0 ? "" : where.known ? "known: " : "SYSTEMATIC: ";
    ok = ok && (!where.kernel || per < 1.0 || where.known);
    std::fprintf(f, "  %s%.2f extra wavefronts per instruction (%llu instructions) at %s\n", verdict, per,
                 (unsigned long long)c.instructions, where.chain.c_str());
  }
  return ok;
}

// The model against hand-counted cases: run once at start-up in banks mode.
inline void shared_banks_self_test() {
  auto waves = [](auto addr_of, int lanes, uint32_t bytes) {
    uintptr_t addr[32];
    bool active[32];
    for (int l = 0; l < 32; ++l) {
      addr[l] = 4096 + uintptr_t(addr_of(l));
      active[l] = l < lanes;
    }
    uint64_t parts = 0;
    const uint64_t w = instruction_wavefronts(addr, active, 32, bytes, &parts);
    return std::pair<uint64_t, uint64_t>(w, parts);
  };
  using P = std::pair<uint64_t, uint64_t>;  // (wavefronts, parts)
  const bool ok =
      waves([](int l) { return 4 * l; }, 32, 4) == P(1, 1) &&          // consecutive floats
      waves([](int l) { return 0 * l; }, 32, 4) == P(1, 1) &&          // one word: a broadcast
      waves([](int l) { return 32 * l; }, 32, 4) == P(8, 1) &&         // stride 8 floats: 8-way
      waves([](int l) { return 128 * l; }, 32, 4) == P(32, 1) &&       // stride 32 floats: 32-way
      waves([](int l) { return 8 * l; }, 32, 4) == P(2, 1) &&          // stride 2 floats: 2-way
      waves([](int l) { return 4 * (l ^ 1); }, 32, 4) == P(1, 1) &&    // any permutation of 32 words
      waves([](int l) { return 8 * l; }, 32, 8) == P(2, 2) &&          // consecutive float2: a half warp each
      waves([](int l) { return 16 * l; }, 32, 8) == P(4, 2) &&         // float2 at stride 16 bytes: 2-way
      waves([](int l) { return 16 * l; }, 32, 16) == P(4, 4) &&        // consecutive float4: a quarter each
      waves([](int l) { return 32 * l; }, 32, 16) == P(8, 4) &&        // float4 at stride 32 bytes: 2-way
      waves([](int l) { return 8 * l; }, 8, 8) == P(1, 1) &&           // 8 lanes active: one part
      waves([](int l) { return 2 * l; }, 32, 2) == P(1, 1);            // 16-bit values share words
  if (!ok) {
    std::fprintf(stderr, "EMULATION ERROR: shared_banks.h's wavefront count disagrees with its hand-counted cases\n");
    std::abort();
  }
}

#if defined(MMM_EMU_BANKS)
// Every banks-mode run checks the model first and ends with the count: the run fails when a source
// line has systematic conflicts (drivers may check more).
inline const bool shared_bank_report_at_exit = [] {
  shared_banks_self_test();
  std::atexit([] {
    if (!report_shared_banks(stdout, "shared-memory bank conflicts (plain loads and stores)", shared_banks)) {
      std::fprintf(stdout, "FAILED: systematic shared-memory bank conflicts (above)\n");
      std::fflush(stdout);
      std::_Exit(1);
    }
  });
  return true;
}();
#endif

}  // namespace emu

#if defined(MMM_EMU_BANKS)
// GCC's kernel-address instrumentation, outline mode (run.sh): the callbacks it emits.
#define MMM_EMU_SHARED_HOOK(kind, n)                                                                   \
  extern "C" __attribute__((weak, no_sanitize_address)) void __asan_##kind##n##_noabort(uintptr_t a) { \
    emu::trace_shared(a, n, __builtin_return_address(0));                                              \
  }
MMM_EMU_SHARED_HOOK(load, 1)
MMM_EMU_SHARED_HOOK(load, 2)
MMM_EMU_SHARED_HOOK(load, 4)
MMM_EMU_SHARED_HOOK(load, 8)
MMM_EMU_SHARED_HOOK(load, 16)
MMM_EMU_SHARED_HOOK(store, 1)
MMM_EMU_SHARED_HOOK(store, 2)
MMM_EMU_SHARED_HOOK(store, 4)
MMM_EMU_SHARED_HOOK(store, 8)
MMM_EMU_SHARED_HOOK(store, 16)
#undef MMM_EMU_SHARED_HOOK
extern "C" __attribute__((weak, no_sanitize_address)) void __asan_loadN_noabort(uintptr_t a, size_t n) {
  emu::trace_shared(a, uint32_t(n), __builtin_return_address(0));
}
extern "C" __attribute__((weak, no_sanitize_address)) void __asan_storeN_noabort(uintptr_t a, size_t n) {
  emu::trace_shared(a, uint32_t(n), __builtin_return_address(0));
}
// The rest of the interface, which this use does not need.
extern "C" __attribute__((weak)) void __asan_handle_no_return() {}
extern "C" __attribute__((weak)) void __asan_before_dynamic_init(const char*) {}
extern "C" __attribute__((weak)) void __asan_after_dynamic_init() {}
#endif
