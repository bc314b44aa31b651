"""Shared helpers for mmm's Python benchmarks (one ``bench_<op>.py`` per op).

What is here
  * ``make_parser``          -- the CLI every benchmark shares (--device, --quick, --out, --budget,
                                --impls, --filter, --reps).
  * ``Timer``                -- median time of a callable.
  * ``measure_copy_bandwidth`` -- the device's copy bandwidth, the ceiling GB/s are compared with.
  * ``environment``          -- device name, torch version, mmm commit, date, ... for the JSON.
  * ``Report``               -- records -> JSON (one run appended per invocation) + aligned table.
  * ``runners``, ``max_rel_err`` -- the fwd / fwd+bwd callables of one impl and the check metric.
  * ``time_impls``, ``bandwidth_record``, ``peer_columns`` -- the per-case skeleton: check and
                                time every impl, one JSON record per (impl, mode), one table row
                                per mode with mmm's GB/s, %BW, best peer, speed-up and check
                                (``peer_check``: the best-peer and check columns alone).
  * ``pyplot``, ``save_plot`` -- matplotlib when importable, and where the PNG goes.

How timing works
  CUDA: every timed run is bracketed by CUDA events on the current stream. Before each run the L2
  is flushed by writing (``zero_()``) a 256 MB buffer, so every run reads its inputs from DRAM
  (inputs are NOT rotated). After the flush a short ``torch.cuda._sleep`` keeps the GPU busy for
  longer than the callable takes to enqueue, so the events measure GPU time and not the host's
  launch overhead (the CPU runs ahead of the GPU, as in a training loop). The first call (which
  includes torch.compile's compilation) and a few warm-up calls are not timed; their wall time is
  kept as ``first_call_s``. The number of timed runs adapts to the run time (see ``Timer``); the
  reported figure is the median.
  CPU: ``time.perf_counter`` around each call, median of the runs, no cache flushing.
  Never timed: input allocation, random number generation, the flush, the checks.

  GB/s are decimal (1e9 bytes per second). Each benchmark documents its byte model.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, asdict, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA = "mmm-bench/1"


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def make_parser(description: str, impls: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The arguments every benchmark shares. Add op-specific ones to the returned parser."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="device to run on (default: cuda when available, else cpu)")
    p.add_argument("--quick", action="store_true",
                   help="fewer and smaller cases and fewer runs (a smoke test, not a measurement)")
    p.add_argument("--out", type=Path, default=None, metavar="PATH.json",
                   help="append this run's records to PATH.json (created if missing)")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="soft time limit: cases not started within SECONDS are skipped (and "
                        "listed as skipped); the case in flight finishes")
    p.add_argument("--impls", default=None, metavar="A,B,..",
                   help="only these implementations" + (f" (of: {', '.join(impls)})" if impls else ""))
    p.add_argument("--filter", default=None, metavar="SUBSTR",
                   help="only cases whose name contains SUBSTR")
    p.add_argument("--reps", type=int, default=None,
                   help="timed runs per measurement (default: adaptive)")
    return p


def resolve_device(args: argparse.Namespace) -> torch.device:
    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch.cuda.is_available() is False "
                 f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")
    args.device = name
    return torch.device(name)


def selected_impls(args: argparse.Namespace, all_impls: Sequence[str]) -> list[str]:
    if not args.impls:
        return list(all_impls)
    want = [s.strip() for s in args.impls.split(",") if s.strip()]
    bad = [w for w in want if w not in all_impls]
    if bad:
        sys.exit(f"error: unknown --impls {bad}; known: {list(all_impls)}")
    return [i for i in all_impls if i in want]


# ------------------------------------------------------------------------------------------------
# Environment
# ------------------------------------------------------------------------------------------------
def _run(cmd: list[str], cwd: Path | None = None, timeout: float = 10.0) -> str | None:
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def git_commit() -> dict[str, Any]:
    """mmm's commit: ``git rev-parse HEAD`` in the repository, else $MMM_COMMIT, else 'unknown'."""
    sha = _run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT)
    if sha:
        dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT)
        return {"commit": sha, "dirty": bool(dirty), "commit_source": "git"}
    env = os.environ.get("MMM_COMMIT")
    if env:
        return {"commit": env, "dirty": None, "commit_source": "MMM_COMMIT"}
    return {"commit": "unknown", "dirty": None, "commit_source": "none"}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mmm_info() -> dict[str, Any]:
    try:
        import mmm  # noqa: F401
    except Exception as e:  # noqa: BLE001 - report whatever stops the import
        return {"importable": False, "error": f"{type(e).__name__}: {e}"}
    info: dict[str, Any] = {"importable": True, "version": getattr(mmm, "__version__", None),
                            "file": getattr(mmm, "__file__", None)}
    bi = getattr(mmm, "build_info", None)
    if callable(bi):
        try:
            b = bi()
            info["build_info"] = b if isinstance(b, (dict, list, str, int, float)) else repr(b)
        except Exception as e:  # noqa: BLE001
            info["build_info"] = f"error: {e}"
    return info


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "device_type": device.type,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        **git_commit(),
        "mmm": mmm_info(),
    }
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        env.update({
            "device_name": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "sm_count": props.multi_processor_count,
            "device_memory_bytes": props.total_memory,
            "l2_bytes": getattr(props, "L2_cache_size", None),
        })
        smi = _run(["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.max.sm,"
                    "clocks.mem,power.limit", "--format=csv,noheader", f"--id={idx}"])
        if smi:
            env["nvidia_smi"] = smi
    else:
        env["device_name"] = env["cpu"]
    return env


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------
@dataclass
class Timing:
    median_s: float
    min_s: float
    max_s: float
    mean_s: float
    reps: int
    first_call_s: float
    times_s: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("times_s")
        return d


class Timer:
    """Median time of ``fn()`` on one device; see the module docstring for the method.

    The number of timed runs is ``target_s / estimate`` clamped to [min_reps, max_reps]
    (or exactly ``reps`` if given).
    """

    FLUSH_BYTES = 256 * 1024 * 1024

    def __init__(self, device: torch.device, *, quick: bool = False, reps: int | None = None,
                 flush: bool = True):
        self.device = device
        self.cuda = device.type == "cuda"
        self.fixed_reps = reps
        self.flush = flush and self.cuda
        if self.cuda:
            self.target_s, self.min_reps, self.max_reps = (0.05, 5, 20) if quick else (0.2, 10, 100)
            self.warmup = 2 if quick else 5
        else:
            self.target_s, self.min_reps, self.max_reps = (0.1, 3, 10) if quick else (0.5, 5, 50)
            self.warmup = 1 if quick else 2
        self._flush_buf: torch.Tensor | None = None
        self._cycles_per_s: float | None = None

    # -- CUDA helpers ---------------------------------------------------------------------------
    def _flush_l2(self) -> None:
        if self._flush_buf is None:
            self._flush_buf = torch.empty(self.FLUSH_BYTES, dtype=torch.uint8, device=self.device)
        self._flush_buf.zero_()

    def _sleep_cycles_per_s(self) -> float:
        """Calibrate torch.cuda._sleep (a spin of N GPU clock cycles) once; 0 if unavailable."""
        if self._cycles_per_s is None:
            self._cycles_per_s = 0.0
            sleep = getattr(torch.cuda, "_sleep", None)
            if sleep is not None:
                try:
                    cycles = 2_000_000
                    sleep(cycles)  # warm
                    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    s.record(); sleep(cycles); e.record(); e.synchronize()
                    ms = s.elapsed_time(e)
                    if ms > 0:
                        self._cycles_per_s = cycles / (ms * 1e-3)
                except Exception:  # noqa: BLE001 - fall back to no head start
                    self._cycles_per_s = 0.0
        return self._cycles_per_s

    def _head_start(self, host_s: float) -> None:
        cps = self._sleep_cycles_per_s()
        if cps > 0:
            # 1.5x the host time to enqueue fn, + 20 us, at most 10 ms.
            secs = min(1.5 * host_s + 20e-6, 10e-3)
            torch.cuda._sleep(int(secs * cps))

    def _reps_for(self, est_s: float) -> int:
        if self.fixed_reps:
            return self.fixed_reps
        n = math.ceil(self.target_s / max(est_s, 1e-7))
        return max(self.min_reps, min(self.max_reps, n))

    # -- public ---------------------------------------------------------------------------------
    def time(self, fn: Callable[[], Any]) -> Timing:
        return self._time_cuda(fn) if self.cuda else self._time_cpu(fn)

    def _time_cpu(self, fn: Callable[[], Any]) -> Timing:
        t0 = time.perf_counter(); fn(); first = time.perf_counter() - t0
        for _ in range(self.warmup):
            fn()
        t0 = time.perf_counter(); fn(); est = time.perf_counter() - t0
        times = []
        for _ in range(self._reps_for(est)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return _timing(times, first)

    def _time_cuda(self, fn: Callable[[], Any]) -> Timing:
        torch.cuda.synchronize()
        t0 = time.perf_counter(); fn(); torch.cuda.synchronize(); first = time.perf_counter() - t0
        host_s = 0.0
        for _ in range(self.warmup):
            t0 = time.perf_counter(); fn(); host_s = max(host_s, time.perf_counter() - t0)
            torch.cuda.synchronize()
        est = statistics.median(self._cuda_runs(fn, 3, host_s))
        times = self._cuda_runs(fn, self._reps_for(est), host_s)
        return _timing(times, first)

    def _cuda_runs(self, fn: Callable[[], Any], reps: int, host_s: float) -> list[float]:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for i in range(reps):
            if self.flush:
                self._flush_l2()
            self._head_start(host_s)
            starts[i].record()
            fn()
            ends[i].record()
        torch.cuda.synchronize()
        return [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends)]

    def release(self) -> None:
        self._flush_buf = None


def _timing(times: list[float], first: float) -> Timing:
    return Timing(median_s=statistics.median(times), min_s=min(times), max_s=max(times),
                  mean_s=statistics.fmean(times), reps=len(times), first_call_s=first,
                  times_s=times)


def measure_copy_bandwidth(device: torch.device, quick: bool = False) -> dict[str, Any]:
    """Copy bandwidth in bytes/s, counting bytes read + bytes written.

    CUDA: ``dst.copy_(src)`` of 1 GiB device-to-device (no flush needed: 2 GiB >> L2), median.
    CPU: ``dst.copy_(src)`` of 256 MiB (64 MiB with quick), median.
    """
    nbytes = (1 << 30) if device.type == "cuda" else ((64 if quick else 256) << 20)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    src.fill_(1)
    dst = torch.empty_like(src)
    t = Timer(device, quick=quick, flush=False, reps=(5 if quick else 20))
    timing = t.time(lambda: dst.copy_(src))
    del src, dst
    if device.type == "cuda":
        torch.cuda.empty_cache()
    bps = 2 * nbytes / timing.median_s
    return {"copy_bytes": nbytes, "bytes_per_s": bps, "GBps": bps / 1e9,
            "median_s": timing.median_s, "method": "dst.copy_(src), read+write bytes"}


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------
class Report:
    """Collects records and appends one run to a JSON file:

    ``{"schema": "mmm-bench/1", "runs": [{"bench", "argv", "args", "env", "copy_bandwidth",
    "notes", "skipped", "records": [...]}, ...]}``
    """

    def __init__(self, bench: str, args: argparse.Namespace, env: dict[str, Any],
                 copy_bw: dict[str, Any] | None):
        self.run: dict[str, Any] = {
            "bench": bench,
            "argv": sys.argv[1:],
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "env": env,
            "copy_bandwidth": copy_bw,
            "notes": {},
            "skipped": [],
            "records": [],
        }

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.run["records"]

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def save(self, path: Path | None) -> None:
        if path is None:
            return
        path = Path(path)
        data: dict[str, Any] = {"schema": SCHEMA, "runs": []}
        if path.exists():
            try:
                with open(path) as f:
                    old = json.load(f)
                if isinstance(old, dict) and isinstance(old.get("runs"), list):
                    data = old
                else:
                    raise ValueError("not an mmm-bench file")
            except (OSError, ValueError) as e:
                backup = path.with_suffix(path.suffix + ".bad")
                print(f"warning: {path} unreadable ({e}); moved to {backup}", file=sys.stderr)
                path.replace(backup)
        data["runs"].append(self.run)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, default=_json_default)
            f.write("\n")
        tmp.replace(path)
        print(f"wrote {len(self.records)} records to {path}")


def _json_default(o: Any) -> Any:
    if isinstance(o, (torch.dtype, torch.device, Path)):
        return str(o)
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return repr(o)


def fmt(v: Any, spec: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "nan"
        return format(v, spec) if spec else f"{v:g}"
    return str(v)


def print_table(rows: Iterable[dict[str, Any]],
                columns: Sequence[tuple[str, str, str]], file=None) -> None:
    """columns: (key, header, format spec). Numbers right-aligned, text left-aligned."""
    rows = list(rows)
    cells = [[fmt(r.get(k), spec) for k, _, spec in columns] for r in rows]
    heads = [h for _, h, _ in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]
    numeric = [all(isinstance(r.get(k), (int, float)) or r.get(k) is None for r in rows)
               for k, _, _ in columns]

    def line(vals: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(vals, widths, numeric)).rstrip()

    out = file or sys.stdout
    print(line(heads), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for c in cells:
        print(line(c), file=out)
    out.flush()


def dtype_name(dt: torch.dtype) -> str:
    """The short dtype names of case names, tables and JSON records."""
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
            torch.float64: "fp64", torch.complex64: "c64"}.get(dt, str(dt))


def describe_env(env: dict[str, Any], copy_bw: dict[str, Any] | None) -> str:
    bw = f"{copy_bw['GBps']:.0f} GB/s" if copy_bw else "n/a"
    mmm = env["mmm"]
    mmm_s = ("mmm " + str(mmm.get("version"))) if mmm.get("importable") else "mmm not importable"
    return (f"{env['device_name']} | torch {env['torch']} | {mmm_s} | commit "
            f"{env['commit'][:12]}{'+dirty' if env.get('dirty') else ''} | {env['date']} | "
            f"copy bandwidth {bw}")


def require_mmm(impls: Sequence[str], *ops: str) -> None:
    """Exits with a clear message when mmm is benchmarked but it (or one of `ops`) is missing."""
    if "mmm" not in impls:
        return
    try:
        import mmm

        for op in ops:
            getattr(mmm, op)
    except Exception as e:  # noqa: BLE001
        sys.exit(f"error: cannot use mmm.{' / mmm.'.join(ops)} ({type(e).__name__}: {e}); "
                 "build/install mmm first, or pass --impls without mmm")


def start(bench: str, args: argparse.Namespace, device: torch.device, impls: Sequence[str],
          cases: Sequence[Any], notes: dict[str, Any]) -> tuple[list, dict, dict, "Report"]:
    """The setup every benchmark shares: room for torch.compile peers, --filter, the environment,
    the copy bandwidth, a Report whose notes gain the timing method and the impls, and the
    printed header. Returns (cases, env, copy_bw, report)."""
    if "compile" in impls:
        # One dynamo reset per case, so the recompile limit is never what stops compilation.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    cases = [c for c in cases if not args.filter or args.filter in c.name]
    env = environment(device)
    copy_bw = measure_copy_bandwidth(device, quick=args.quick)
    report = Report(bench, args, env, copy_bw)
    report.run["notes"] = {
        **notes,
        "timing": ("CUDA events, L2 flushed (256 MB write) before each run, median"
                   if device.type == "cuda" else "time.perf_counter, median"),
        "impls": list(impls),
    }
    print(describe_env(env, copy_bw), flush=True)
    return cases, env, copy_bw, report


def run_cases(cases: Sequence[Any], run_one: Callable[[Any], list], *, args: argparse.Namespace,
              report: "Report", timer: "Timer", env: dict[str, Any], copy_bw: dict[str, Any],
              columns: Sequence[tuple], footer: str, t_start: float) -> int:
    """Runs every case (within --budget), prints the environment and the table, saves the
    report, and returns the exit status: 1 if a check of mmm failed or mmm errored."""
    table: list = []
    for i, c in enumerate(cases):
        elapsed = time.perf_counter() - t_start
        if args.budget is not None and elapsed > args.budget:
            report.run["skipped"] = [x.name for x in cases[i:]]
            print(f"budget of {args.budget:.0f} s spent: skipping {len(cases) - i} cases: "
                  + ", ".join(x.name for x in cases[i:]), flush=True)
            break
        print(f"[{i + 1}/{len(cases)}] {c.name} ({elapsed:.0f} s)", flush=True)
        try:
            table += run_one(c)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory while making the inputs
            print(f"  [{c.name}] failed: {e}", file=sys.stderr)
            report.add({"case": c.name, "status": "error", "error": str(e)[:300]})
    timer.release()

    print()
    print(describe_env(env, copy_bw))
    print_table(table, columns)
    print(footer)
    report.run["wall_s"] = time.perf_counter() - t_start
    report.save(args.out)
    failed_checks = [r for r in table if str(r.get("check", "")).startswith(("FAIL", "error"))]
    errors = [r for r in report.records if r.get("status") == "error"]
    mmm_errors = [r for r in errors if r.get("impl") in ("mmm", None)]
    if errors:
        print(f"{len(errors)} errored measurements ({len(mmm_errors)} of mmm or whole cases)",
              file=sys.stderr)
    if failed_checks or mmm_errors:
        print(f"{len(failed_checks)} failed checks, {len(mmm_errors)} mmm errors -> exit 1",
              file=sys.stderr)
        return 1
    return 0



# ------------------------------------------------------------------------------------------------
# One case: check, time, record, summarise
# ------------------------------------------------------------------------------------------------
def runners(fn: Callable, inputs: Sequence[torch.Tensor | None],
            dy: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """``fwd``: fn(*inputs) under no_grad; ``fwd+bwd``: (y, *grads of every non-None input).
    The leaves are made here, once, so neither detach nor requires_grad_ is timed."""
    def run_fwd():
        with torch.no_grad():
            return fn(*inputs)

    leaves = [a.detach().requires_grad_(True) if a is not None else None for a in inputs]
    want = [a for a in leaves if a is not None]

    def run_fwdbwd():
        y = fn(*leaves)
        return (y, *torch.autograd.grad(y, want, dy))

    return {"fwd": run_fwd, "fwd+bwd": run_fwdbwd}


def rel_err(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype | None = None) -> float:
    """max |a - b| / max |b| in ``dtype`` (default: b's, the reference's); inf on a shape mismatch."""
    if a.shape != b.shape:
        return float("inf")
    dtype = dtype or b.dtype
    a, b = a.detach().to(dtype), b.detach().to(dtype)
    denom = b.abs().max().item() if b.numel() else 0.0
    return (a - b).abs().max().item() / (denom if denom > 0 else 1.0)


def max_rel_err(a: Any, b: Any, dtype: torch.dtype | None = None) -> float:
    """rel_err over matching outputs (a tensor or a tuple of them, e.g. y and the gradients).
    NaN counts as inf: max() would otherwise keep a finite error seen before it."""
    a = list(a) if isinstance(a, (tuple, list)) else [a]
    b = list(b) if isinstance(b, (tuple, list)) else [b]
    if len(a) != len(b):
        return float("inf")
    errs = [rel_err(x, y, dtype) for x, y in zip(a, b)]
    return max(e if math.isfinite(e) else float("inf") for e in errs)


def time_impls(case_name: str, impls: Sequence[str],
               prepare: Callable[[str], tuple[dict[str, Callable[[], Any]], Any]],
               record: Callable[[str, str, Timing, Any], dict[str, Any]], *, timer: Timer,
               device: torch.device, report: Report, modes: Sequence[str],
               keep_timed: bool = False) -> tuple[dict[str, dict[str, Timing | None]], dict]:
    """Checks and times every impl of one case.

    ``prepare(impl)`` returns (runners by mode, its check errors or None), or None for an impl
    that does not apply to the case; ``record(impl, mode, timing, check errors)`` the JSON record
    of one measurement. Returns (per_mode[mode][impl] = Timing, or None where the impl errored;
    errs[impl]). One failing impl must not stop the sweep: its error is printed and recorded for
    every mode, and the next impl runs. A failure after some modes were timed voids them too,
    unless ``keep_timed`` (the table then still shows those modes).
    """
    per_mode: dict[str, dict[str, Timing | None]] = {m: {} for m in modes}
    errs: dict[str, Any] = {}
    for impl in impls:
        try:
            prepared = prepare(impl)
            if prepared is None:
                continue
            run, err = prepared
            if err is not None:
                errs[impl] = err
            for mode in modes:
                t = timer.time(run[mode])
                per_mode[mode][impl] = t
                report.add(record(impl, mode, t, err))
            del run
        except Exception as e:  # noqa: BLE001 - one failing impl must not stop the sweep
            msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            print(f"  [{case_name}] {impl} failed: {msg}", file=sys.stderr)
            if os.environ.get("MMM_BENCH_TRACEBACK"):
                traceback.print_exc()
            for mode in modes:
                if keep_timed:
                    per_mode[mode].setdefault(impl, None)
                else:
                    per_mode[mode][impl] = None
                report.add({"case": case_name, "impl": impl, "mode": mode, "status": "error",
                            "error": msg})
        if device.type == "cuda":
            torch.cuda.synchronize()
    return per_mode, errs


def bandwidth_record(case_name: str, fields: dict[str, Any], impl: str, mode: str, nbytes: int,
                     t: Timing, copy_bps: float, check_rel_err: float,
                     check_tol: float) -> dict[str, Any]:
    """The JSON record of one measurement of a memory-bound op (GB/s over its byte model)."""
    return {"case": case_name, **fields, "impl": impl, "mode": mode, "bytes": nbytes,
            **t.summary(), "GBps": nbytes / t.median_s / 1e9,
            "pct_copy_bw": 100.0 * nbytes / t.median_s / copy_bps,
            "check_rel_err": check_rel_err, "check_tol": check_tol, "status": "ok"}


def peer_check(row: dict[str, Any], ts: dict[str, Timing | None], *, peers: Sequence[str],
               errs: dict[str, float], tol: float) -> str | None:
    """The comparison half of a table row, for one mode: the fastest measured peer and
    speed-up = its time / mmm's, mmm's check (``errs[impl]`` for this mode) against ``tol``, and the
    worst peer's error. Returns the fastest peer (None if no peer was measured)."""
    m = ts.get("mmm")
    measured = {k: v for k, v in ts.items() if k in peers and v is not None}
    best = min(measured, key=lambda k: measured[k].median_s) if measured else None
    if best:
        row["best_peer"] = best
        if m:
            row["speedup"] = measured[best].median_s / m.median_s
    if "mmm" in ts and ts["mmm"] is None:
        row["check"] = "error"
    elif "mmm" in errs:
        row["check"] = "ok" if errs["mmm"] <= tol else f"FAIL {errs['mmm']:.1e}"
        row["mmm_err"] = errs["mmm"]
    else:
        row["check"] = "-"
    peer_errs = [errs[k] for k in peers if k in errs]
    if peer_errs:
        row["peer_err"] = max(peer_errs)
    return best


def peer_columns(row: dict[str, Any], ts: dict[str, Timing | None], *, impls: Sequence[str],
                 peers: Sequence[str], nbytes: int, copy_bps: float,
                 errs: dict[str, float], tol: float) -> dict[str, Any]:
    """Fills one table row of a memory-bound op from one mode's timings and check errors
    (``errs[impl]`` for that mode): each impl's us, mmm's GB/s and %BW, then ``peer_check``."""
    for impl in impls:
        t = ts.get(impl)
        row[f"{impl}_us"] = t.median_s * 1e6 if t else None
    m = ts.get("mmm")
    if m:
        row["mmm_GBps"] = nbytes / m.median_s / 1e9
        row["mmm_pct"] = 100.0 * nbytes / m.median_s / copy_bps
    peer_check(row, ts, peers=peers, errs=errs, tol=tol)
    return row


def release(device: torch.device) -> None:
    """Returns a finished case's tensors to the device, so the next case's big inputs fit."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------------
def pyplot():
    """matplotlib.pyplot on the Agg backend, or None (with a note) where it is not importable:
    a missing plot must not fail a benchmark run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001
        print(f"plot skipped: matplotlib is not importable ({type(e).__name__}: {e})")
        return None
    return plt


def plot_path(args: argparse.Namespace, default: str) -> Path:
    """--plot, else next to --out, else ``default`` in the working directory."""
    return args.plot or (args.out.with_suffix(".png") if args.out else Path(default))


def add_plot_arg(parser: argparse.ArgumentParser, what: str, default: str) -> None:
    parser.add_argument("--plot", type=Path, default=None, metavar="PATH.png",
                        help=f"write the {what} plot here (default on CUDA: next to --out, else {default})")


def plot_panels(report: Report, impls: Sequence[str], path: Path, panels: Sequence[tuple[str, Callable]], *,
                x: str, y: str, xlabel: str, ylabel: str, ncols: int, copy_line: bool = False,
                tick_label: Callable[[Any], str] | None = None, panel_size: tuple[float, float] = (4.5, 3.4)) -> None:
    """One panel per (title, keep) of ``panels`` (row-major, ``ncols`` a row): a line per impl of
    ``y`` against ``x`` (log2 axis) over the successful records ``keep`` accepts; ``copy_line``
    draws the measured copy bandwidth (for GB/s panels)."""
    plt = pyplot()
    if plt is None:
        return
    recs = [r for r in report.records if r.get("status") == "ok"]
    if not recs or not panels:
        print("plot skipped: no successful measurement")
        return
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows), squeeze=False)
    for ax, (title, keep) in zip(axes.flat, panels):
        for impl in impls:
            pts = sorted((r[x], r[y]) for r in recs if r["impl"] == impl and keep(r))
            if pts:
                ax.plot(*zip(*pts), marker="o", label=impl)
        if copy_line:
            ax.axhline(report.run["copy_bandwidth"]["bytes_per_s"] / 1e9, color="gray", linestyle="--",
                       linewidth=1, label="copy")
        ax.set_xscale("log", base=2)
        if tick_label is not None:
            ticks = sorted({r[x] for r in recs})
            ax.set_xticks(ticks, [tick_label(t) for t in ticks])
            ax.minorticks_off()
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    save_plot(fig, report, path)


def save_plot(fig, report: Report, path: Path) -> None:
    """Titles the figure with the run's environment and writes it."""
    fig.suptitle(describe_env(report.run["env"], report.run["copy_bandwidth"]), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote plot {path}")
