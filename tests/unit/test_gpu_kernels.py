"""The cuda/ kernels without a GPU: present, compilable by nvcc, and correct when run on the CPU.

The kernels use only grid-stride loops, so running every (block, thread) of
the launch one after another on the host computes exactly what the GPU would.
A tiny C++ harness does that with the CUDA built-ins defined as globals.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from shmserve.gpu.batch import KERNEL_NAMES, kernel_path, kernel_source, launch_shape

HARNESS = r"""
#include <cstdio>
#include <cstdlib>
#include <cstring>
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
struct uint4 { unsigned int x, y, z, w; };
struct dim3 { unsigned int x, y, z; };
static dim3 blockIdx, threadIdx, blockDim, gridDim;
#include KERNEL

// argv: mode(g|s) threads blocks_x then n sizes, then n misalignments
int main(int argc, char** argv) {
    char mode = argv[1][0];
    unsigned threads = atoi(argv[2]), bx = atoi(argv[3]);
    int n = atoi(argv[4]);
    unsigned long long* sizes = new unsigned long long[n];
    unsigned long long offsets[65];
    offsets[0] = 0;
    for (int i = 0; i < n; ++i) { sizes[i] = strtoull(argv[5 + i], 0, 10); offsets[i + 1] = offsets[i] + sizes[i]; }
    unsigned long long total = offsets[n];
    unsigned char* pool = (unsigned char*)aligned_alloc(64, (total + 64 * n + 64) * 2);
    unsigned char* big = pool + atoi(argv[5 + n]);               // batch buffer
    unsigned char* parts = pool + (total + 127) / 64 * 64;        // per-caller buffers, 64-aligned
    unsigned long long addrs[64];
    unsigned long long cursor = 0;
    for (int i = 0; i < n; ++i) {
        cursor = (cursor + 63) / 64 * 64 + atoi(argv[6 + n + i]);
        addrs[i] = (unsigned long long)(parts + cursor);
        cursor += sizes[i];
    }
    for (int i = 0; i < n; ++i) for (unsigned long long k = 0; k < sizes[i]; ++k)
        ((unsigned char*)addrs[i])[k] = mode == 'g' ? (unsigned char)(i * 37 + k * 11 + 1) : 0;
    for (unsigned long long k = 0; k < total; ++k) big[k] = mode == 's' ? (unsigned char)(k * 13 + 5) : 0;
    gridDim = {bx, (unsigned)n, 1}; blockDim = {threads, 1, 1};
    for (unsigned y = 0; y < (unsigned)n; ++y) for (unsigned x = 0; x < bx; ++x) for (unsigned t = 0; t < threads; ++t) {
        blockIdx = {x, y, 0}; threadIdx = {t, 0, 0};
        if (mode == 'g') gather_bytes(addrs, offsets, (unsigned long long)big, n);
        else scatter_bytes((unsigned long long)big, offsets, addrs, n);
    }
    for (int i = 0; i < n; ++i) for (unsigned long long k = 0; k < sizes[i]; ++k) {
        unsigned char a = ((unsigned char*)addrs[i])[k], b = big[offsets[i] + k];
        if (a != b) { printf("mismatch range %d byte %llu: %d != %d\n", i, k, a, b); return 1; }
    }
    printf("ok %llu\n", total);
    return 0;
}
"""


def test_kernel_source_is_present_and_declares_the_kernels_batch_loads():
    src = kernel_source()
    assert kernel_path().name == "gather.cu"
    for name in KERNEL_NAMES:
        assert re.search(rf'extern "C" __global__ void {name}\(', src), name
    assert not re.search(r"^\s*#\s*include", src, re.M), "NVRTC (cupy.RawModule) has no C library headers"
    code = re.sub(r"//[^\n]*", "", src)
    assert code.count("{") == code.count("}") and code.count("(") == code.count(")")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_nvcc_compiles_the_kernels_to_ptx(tmp_path):
    out = tmp_path / "gather.ptx"
    subprocess.run(["nvcc", "-ptx", "--std=c++14", str(kernel_path()), "-o", str(out)], check=True, timeout=120)
    ptx = out.read_text()
    for name in KERNEL_NAMES:
        assert f".entry {name}(" in ptx


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler to run the kernels on the CPU")
    folder = tmp_path_factory.mktemp("kernel")
    (folder / "harness.cpp").write_text(HARNESS)
    exe = folder / "harness"
    subprocess.run(
        [cxx, "-O1", "-std=c++17", f'-DKERNEL="{kernel_path()}"', str(folder / "harness.cpp"), "-o", str(exe)],
        check=True, timeout=120,
    )
    return exe


@pytest.mark.parametrize("mode", ["g", "s"])
@pytest.mark.parametrize(
    "sizes, batch_misalign, part_misalign, threads, blocks",
    [
        ([3136] * 4, 0, [0] * 4, 32, 2),             # aligned: the 16-byte vector path
        ([3136, 17, 0, 4099], 0, [0, 0, 0, 0], 8, 3),  # aligned ranges with byte tails, then misaligned ones
        ([100, 257], 1, [3, 0], 16, 1),              # misaligned batch buffer: byte path
        ([64, 64, 64], 0, [0, 5, 8], 4, 5),          # some sources misaligned only
        ([1], 0, [0], 1, 1),
    ],
)
def test_kernels_copy_every_byte_on_a_cpu_emulated_launch(harness, mode, sizes, batch_misalign, part_misalign, threads, blocks):
    args = [str(harness), mode, str(threads), str(blocks), str(len(sizes)), *map(str, sizes), str(batch_misalign), *map(str, part_misalign)]
    run = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == f"ok {sum(sizes)}"


def test_launch_shape_covers_the_largest_range_and_respects_limits():
    (bx, by), (threads,) = launch_shape(3136, 64)
    assert by == 64 and bx * threads * 16 >= 3136
    (bx, _), _ = launch_shape(1 << 30, 2)
    assert bx == 1024  # capped; the grid-stride loop covers the rest
    assert launch_shape(0, 1)[0][0] == 1
    with pytest.raises(ValueError, match="65535"):
        launch_shape(10, 70000)
