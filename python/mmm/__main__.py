"""python -m mmm: what this install was built with, the GPU it sees, and a selftest of every op."""
import sys

import torch

import mmm
from mmm.ops import MODULES


def main() -> int:
    info = mmm.build_info()
    print("mmm build info:")
    for k, v in info.items():
        print(f"  {k:14s} {v}")
    devices = ["cpu"]
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print(f"GPU: {p.name} (sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB)")
        if info["cuda_kernels"]:
            devices.append("cuda")
        else:
            print("  (mmm was built without CUDA kernels: CUDA ops unavailable)")
    else:
        print("GPU: none visible (torch.cuda.is_available() is False); CPU only")
    failed = 0
    for name, module in MODULES.items():
        for device in devices:
            try:
                err = module.selftest(device)
                print(f"selftest {name:16s} {device:5s} ok   (worst relative error {err:.1e})")
            except Exception as exc:  # report every op, then fail
                failed += 1
                print(f"selftest {name:16s} {device:5s} FAIL {type(exc).__name__}: {exc}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
