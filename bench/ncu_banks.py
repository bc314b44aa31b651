"""Each mmm CUDA kernel path once, on small shapes, for Nsight Compute's shared-memory counters.

bench/gpu_check.sh's ncu_banks step runs this under `ncu --metrics ...` (one profiled launch per
kernel) and keeps the CSV: the measured shared-memory wavefronts and bank conflicts, and global
requests and sectors, per kernel, to set against what the emulation counts without a GPU (tests/emulate/memory_counts.h for plain
loads and stores, ptx_on_cpu.h for ldmatrix and cp.async). By hand:

    ncu --csv --metrics <list> python bench/ncu_banks.py > ncu-banks.csv
"""
import torch

import mmm


def main() -> None:
    torch.manual_seed(0)
    dev = "cuda"
    bf16, f32 = torch.bfloat16, torch.float32

    # fused_add_norm: warp-per-row, block-per-row (4 and 16 warps), forward and backward.
    for n in (1024, 4096, 65536):
        x = torch.randn(64, n, device=dev, dtype=bf16, requires_grad=True)
        w = torch.randn(n, device=dev, dtype=bf16, requires_grad=True)
        b = torch.randn(n, device=dev, dtype=bf16, requires_grad=True)
        mmm.fused_add_norm(x, w, b, activation="gelu").float().sum().backward()

    # fused_attention: head dims 64 and 128, forward and backward, causal.
    for d in (64, 128):
        q, k, v = (torch.randn(1, 4, 1024, d, device=dev, dtype=bf16, requires_grad=True) for _ in range(3))
        mmm.fused_attention(q, k, v, causal=True).float().sum().backward()

    # block_diag_matmul: tensor cores (bf16) and the fp32 FMA kernel, forward and backward.
    for dt in (bf16, f32):
        x = torch.randn(4096, 16 * 64, device=dev, dtype=dt, requires_grad=True)
        w = torch.randn(16, 64, 64, device=dev, dtype=dt, requires_grad=True)
        mmm.block_diag_matmul(x, w).float().sum().backward()

    # monarch_matmul: the fused forward (4096 features, 64 blocks of 64).
    x = torch.randn(2048, 4096, device=dev, dtype=bf16)
    w1 = torch.randn(64, 64, 64, device=dev, dtype=bf16) / 8
    w2 = torch.randn(64, 64, 64, device=dev, dtype=bf16) / 8
    mmm.monarch_matmul(x, w1, w2)

    # FFTs: within a warp, one CTA, four-step; complex and real.
    for n in (256, 4096, 65536):
        z = torch.randn(64, n, device=dev, dtype=torch.complex64)
        mmm.fft(z)
        mmm.rfft(torch.randn(64, n, device=dev))

    # hadamard_transform: registers only, one CTA through shared memory, fp32 and bf16.
    for n, dt in ((256, f32), (4096, f32), (32768, bf16)):
        mmm.hadamard_transform(torch.randn(64, n, device=dev, dtype=dt))

    # fftconv: the fused one-CTA kernel, forward and backward.
    u = torch.randn(4, 16, 4096, device=dev, requires_grad=True)
    kern = torch.randn(16, 4096, device=dev, requires_grad=True)
    mmm.fftconv(u, kern).sum().backward()

    # butterfly_multiply: forward and backward.
    n = 1024
    xb = torch.randn(64, 1, n, device=dev, requires_grad=True)
    tw = torch.randn(1, 1, 10, n // 2, 2, 2, device=dev, requires_grad=True)
    mmm.butterfly_multiply(xb, tw).sum().backward()

    torch.cuda.synchronize()
    print("ncu_banks: every kernel path ran")


if __name__ == "__main__":
    main()
