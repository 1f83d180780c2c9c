// Gather and scatter of byte ranges: the device side of shmserve's batching.
//
// gather_bytes copies n source ranges, back to back, into one destination
// (several callers' tensors become one batch along dim 0); scatter_bytes does
// the reverse (one batch output into n caller-owned buffers). One launch
// serves the whole batch: blockIdx.y picks the range, the x dimension is a
// grid-stride loop over its bytes, 16 bytes per thread and step when both ends
// are 16-byte aligned (the usual case: allocators align to 256 or 512 bytes).
//
// Compiled at run time by NVRTC (cupy.RawModule), so no #include: NVRTC has
// no C library headers. Pointers travel as unsigned long long so the kernel
// parameters have one 8-byte layout whatever the caller passes.
//
// Table layout (device memory, unsigned long long each):
//   addrs[0..n)       source (gather) or destination (scatter) addresses
//   offsets[0..n]     prefix sums of the byte sizes; offsets[0] == 0

__device__ __forceinline__ void copy_range(const unsigned char* __restrict__ src,
                                           unsigned char* __restrict__ dst,
                                           unsigned long long nbytes)
{
    const unsigned long long first = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned long long step = (unsigned long long)gridDim.x * blockDim.x;
    unsigned long long done = 0;
    if ((((unsigned long long)src | (unsigned long long)dst) & 15ULL) == 0ULL) {
        const unsigned long long nvec = nbytes / 16ULL;
        const uint4* __restrict__ s = (const uint4*)src;
        uint4* __restrict__ d = (uint4*)dst;
        for (unsigned long long k = first; k < nvec; k += step) {
            d[k] = s[k];
        }
        done = nvec * 16ULL;
    }
    for (unsigned long long k = done + first; k < nbytes; k += step) {
        dst[k] = src[k];
    }
}

extern "C" __global__ void gather_bytes(const unsigned long long* __restrict__ srcs,
                                        const unsigned long long* __restrict__ offsets,
                                        unsigned long long dst,
                                        int n)
{
    const int i = blockIdx.y;
    if (i >= n) {
        return;
    }
    const unsigned long long begin = offsets[i];
    copy_range((const unsigned char*)srcs[i], (unsigned char*)dst + begin, offsets[i + 1] - begin);
}

extern "C" __global__ void scatter_bytes(unsigned long long src,
                                         const unsigned long long* __restrict__ offsets,
                                         const unsigned long long* __restrict__ dsts,
                                         int n)
{
    const int i = blockIdx.y;
    if (i >= n) {
        return;
    }
    const unsigned long long begin = offsets[i];
    copy_range((const unsigned char*)src + begin, (unsigned char*)dsts[i], offsets[i + 1] - begin);
}
