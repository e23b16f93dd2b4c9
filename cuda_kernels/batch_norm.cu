// Batch normalisation (training, batch statistics) for gpulayers: two launches forward, two backward.
//
// Compiled at run time by NVRTC through cupy.RawModule (gpulayers/kernels.py): no #include,
// templates instantiated for float and double by name expression. Launched by
// gpulayers/ops/batch_norm_cuda.py for C-contiguous (N, C, L) input (L = H * W, or 1).
//
//   forward:  batch_norm_stats_kernel  (one block per channel: mean, 1/std, running statistics)
//             batch_norm_apply_kernel  (one thread per element: y = (x - mean) * (w / std) + b,
//                                       optionally followed by ReLU; num_batches_tracked += 1)
//   backward: batch_norm_backward_reduce_kernel (one block per channel: dbias = sum(g),
//                                       dweight = sum(g * (x - mean)) / std, and the two
//                                       per-channel coefficients of dx)
//             batch_norm_backward_apply_kernel  (one thread per element: dx)
// where g = dy, or dy masked by the fused ReLU's output (0 where y <= 0, as ReLU's backward).
//
// Deterministic: each thread of a channel's block sums a fixed strided subset of the channel's
// values in double, then a fixed-shape tree over the block's shared memory combines them; no
// atomics. The variance uses sums shifted by the channel's first value, which keeps the
// single pass accurate when the mean is large against the spread.

#define BN_THREADS 256  // threads per block of the reduction kernels (launch with at most this many)

// Sums a[0..blockDim.x) and b[0..blockDim.x) into a[0] and b[0]: the same tree for any block size.
template <typename A>
__device__ __forceinline__ void bn_block_sum2(A* a, A* b) {
  const unsigned int tid = threadIdx.x;
  for (unsigned int stride = 1; stride < blockDim.x; stride *= 2) {
    __syncthreads();
    if (tid % (2 * stride) == 0 && tid + stride < blockDim.x) {
      a[tid] += a[tid + stride];
      b[tid] += b[tid + stride];
    }
  }
  __syncthreads();
}

// Per channel c: mean[c], invstd[c] = 1 / sqrt(biased variance + eps); with update_running,
// running_mean = (1 - f) * running_mean + f * mean and running_var likewise with the unbiased
// variance, f = momentum, or 1 / (num_batches_tracked + 1) when cumulative (the counter itself
// is incremented by batch_norm_apply_kernel, which runs after this one).
template <typename T>
__global__ void batch_norm_stats_kernel(const T* __restrict__ x, T* __restrict__ mean_out,
                                        T* __restrict__ invstd_out, T* running_mean, T* running_var,
                                        const long long* num_batches_tracked, int batch, int channels,
                                        long long plane, T eps, T momentum, int update_running, int cumulative) {
  __shared__ double sum_shared[BN_THREADS];
  __shared__ double sq_shared[BN_THREADS];
  const long long count = (long long)batch * plane;
  for (int c = blockIdx.x; c < channels; c += gridDim.x) {
    const double shift = (double)x[(long long)c * plane];
    double sum = 0.0, sq = 0.0;
    for (long long i = threadIdx.x; i < count; i += blockDim.x) {
      const long long n = i / plane;
      const double v = (double)x[(n * channels + c) * plane + (i - n * plane)] - shift;
      sum += v;
      sq += v * v;
    }
    sum_shared[threadIdx.x] = sum;
    sq_shared[threadIdx.x] = sq;
    bn_block_sum2(sum_shared, sq_shared);
    if (threadIdx.x == 0) {
      const double shifted_mean = sum_shared[0] / (double)count;
      double var = sq_shared[0] / (double)count - shifted_mean * shifted_mean;
      if (var < 0.0) var = 0.0;
      const T mean = (T)(shift + shifted_mean);
      const T var_t = (T)var;
      mean_out[c] = mean;
      invstd_out[c] = T(1) / sqrt(var_t + eps);
      if (update_running) {
        const double f = cumulative ? 1.0 / (double)(*num_batches_tracked + 1) : (double)momentum;
        const double unbiased = var * ((double)count / (double)(count - 1));
        running_mean[c] = (T)((1.0 - f) * (double)running_mean[c] + f * (double)mean);
        running_var[c] = (T)((1.0 - f) * (double)running_var[c] + f * unbiased);
      }
    }
    __syncthreads();  // the shared arrays are reused by the next channel
  }
}

// y = (x - mean[c]) * (weight[c] * invstd[c]) + bias[c], then max(y, 0) with relu (NaN kept).
// The thread of element 0 increments num_batches_tracked when `increment` is set.
template <typename T>
__global__ void batch_norm_apply_kernel(const T* __restrict__ x, const T* __restrict__ mean,
                                        const T* __restrict__ invstd, const T* __restrict__ weight,
                                        const T* __restrict__ bias, T* __restrict__ y, long long* num_batches_tracked,
                                        long long total, int channels, long long plane, int has_weight, int has_bias,
                                        int relu, int increment) {
  for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    const int c = (int)((index / plane) % channels);
    const T scale = has_weight ? weight[c] * invstd[c] : invstd[c];
    T v = (x[index] - mean[c]) * scale;
    if (has_bias) v = v + bias[c];
    if (relu && v <= T(0)) v = T(0);
    y[index] = v;
    if (increment && index == 0) *num_batches_tracked += 1;
  }
}

// Per channel c, with g = dy (or 0 where the fused ReLU's output y <= 0):
//   dbias[c] = sum(g), dweight[c] = sum(g * (x - mean)) * invstd,
//   coef_b[c] = -a * invstd * dweight / m and coef_c[c] = -a * dbias / m (a = weight * invstd,
//   m values per channel), so that dx = a * g + coef_b * (x - mean) + coef_c.
template <typename T>
__global__ void batch_norm_backward_reduce_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                                  const T* __restrict__ y, const T* __restrict__ mean,
                                                  const T* __restrict__ invstd, const T* __restrict__ weight,
                                                  T* __restrict__ dweight, T* __restrict__ dbias,
                                                  T* __restrict__ coef_b, T* __restrict__ coef_c, int batch,
                                                  int channels, long long plane, int has_weight, int relu) {
  __shared__ double g_shared[BN_THREADS];
  __shared__ double gx_shared[BN_THREADS];
  const long long count = (long long)batch * plane;
  for (int c = blockIdx.x; c < channels; c += gridDim.x) {
    const T m = mean[c];
    double sum_g = 0.0, sum_gx = 0.0;
    for (long long i = threadIdx.x; i < count; i += blockDim.x) {
      const long long n = i / plane;
      const long long at = (n * channels + c) * plane + (i - n * plane);
      const T g = (relu && y[at] <= T(0)) ? T(0) : dy[at];
      sum_g += (double)g;
      sum_gx += (double)g * (double)(x[at] - m);
    }
    g_shared[threadIdx.x] = sum_g;
    gx_shared[threadIdx.x] = sum_gx;
    bn_block_sum2(g_shared, gx_shared);
    if (threadIdx.x == 0) {
      const T inv = invstd[c];
      const T db = (T)g_shared[0];
      const T dw = (T)(gx_shared[0] * (double)inv);
      const T a = has_weight ? weight[c] * inv : inv;
      dbias[c] = db;
      dweight[c] = dw;
      coef_b[c] = -a * inv * dw / (T)count;
      coef_c[c] = -a * db / (T)count;
    }
    __syncthreads();
  }
}

// dx = a * g + coef_b[c] * (x - mean[c]) + coef_c[c], a = weight[c] * invstd[c].
template <typename T>
__global__ void batch_norm_backward_apply_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                                 const T* __restrict__ y, const T* __restrict__ mean,
                                                 const T* __restrict__ invstd, const T* __restrict__ weight,
                                                 const T* __restrict__ coef_b, const T* __restrict__ coef_c,
                                                 T* __restrict__ dx, long long total, int channels, long long plane,
                                                 int has_weight, int relu) {
  for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    const int c = (int)((index / plane) % channels);
    const T a = has_weight ? weight[c] * invstd[c] : invstd[c];
    const T g = (relu && y[index] <= T(0)) ? T(0) : dy[index];
    T v = a * g;
    v = v + coef_b[c] * (x[index] - mean[c]);
    dx[index] = v + coef_c[c];
  }
}
