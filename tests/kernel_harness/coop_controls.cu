// Negative controls for the cooperative harness (not shipped; see tests/test_kernels_igemm.py).
// Each block reverses its 64-element slice through shared memory.
template <typename T>
__global__ void reverse_kernel(const T* __restrict__ x, T* __restrict__ y, int n, int mode) {
  __shared__ T tile[64];
  const int t = threadIdx.x;
  const int i = blockIdx.x * 64 + t;
  if (mode == 2 && t == 5) return;                 // a thread that skips the barrier
  tile[t] = i < n ? x[i] : T(0);
  T* row = tile;                                   // through a pointer, as tiled kernels index
  if (mode == 3) row[t + 1] = T(0);                // mode 3: thread 63 writes past the shared array
  if (mode != 1) __syncthreads();                  // mode 1: the barrier is missing
  if (i < n) y[i] = tile[63 - t];
}
