// Cross-entropy of (N, C) logits against int64 class indices for gpulayers: one launch forward,
// one backward, the loss left on the device.
//
// Compiled at run time by NVRTC through cupy.RawModule (gpulayers/kernels.py): no #include,
// templates instantiated for float and double by name expression. Launched by
// gpulayers/ops/cross_entropy_cuda.py.
//
// With log p = log_softmax(z) per sample, class weights w (1 without), smoothing s and C classes:
//   loss_i = (1 - s) * w[t_i] * -log p[t_i] + s / C * sum_k w[k] * -log p[k]
//   mean:  sum_i loss_i / sum_i w[t_i];  sum: sum_i loss_i;  none: loss_i
//   dloss_i/dz_c = (1 - s) * w[t] * (p_c - [c == t]) + s / C * (W * p_c - w[c]),  W = sum_k w[k]
// A sample whose target equals ignore_index (when has_ignore) adds 0 to the loss, the weight sum
// and the gradient. A target outside [0, C) otherwise makes its loss and gradient NaN (and the
// reduced loss NaN) and sets invalid[0], so a bad label is never silently wrong and the host
// reads the flag only when it asks.
//
// Deterministic: the forward is one block whose threads take a fixed strided subset of the
// samples, combined by a fixed tree in shared memory; no atomics.

#define CE_THREADS 256  // threads of the forward block (launch with at most this many)

template <typename T>
__device__ __forceinline__ T ce_nan() {
  return (T)__longlong_as_double(0x7ff8000000000000LL);
}

// Per sample: lse[2i] = max_c z and lse[2i+1] = log(sum_c exp(z - max)) (kept apart: their sum
// rounds away the second for large logits), per_sample[i] = loss_i (NaN for an
// invalid target); then loss[0] = the reduction; scale[0] = 1 / sum_i w[t_i] for "mean" (else 1),
// scale[1] = W; invalid[0] = 1 if any target was out of range (else 0).
// reduction: 0 none, 1 mean, 2 sum.
template <typename T>
__global__ void cross_entropy_forward_kernel(const T* __restrict__ logits, const long long* __restrict__ target,
                                             const T* __restrict__ weight, T* __restrict__ lse,
                                             T* __restrict__ per_sample, T* __restrict__ loss, T* __restrict__ scale,
                                             int* __restrict__ invalid, int batch, int classes, T smoothing,
                                             int has_weight, int has_ignore, long long ignore_index, int reduction) {
  __shared__ double loss_shared[CE_THREADS];
  __shared__ double weight_shared[CE_THREADS];
  __shared__ double bad_shared[CE_THREADS];
  double loss_sum = 0.0, weight_sum = 0.0, bad = 0.0;
  double total_weight = (double)classes;  // W
  if (has_weight) {
    total_weight = 0.0;
    for (int k = 0; k < classes; ++k) total_weight += (double)weight[k];
  }
  for (int i = threadIdx.x; i < batch; i += blockDim.x) {
    const T* row = logits + (long long)i * classes;
    T top = row[0];
    for (int k = 1; k < classes; ++k) top = (row[k] > top || row[k] != row[k]) ? row[k] : top;
    double sum_exp = 0.0;
    for (int k = 0; k < classes; ++k) sum_exp += exp((double)(row[k] - top));
    const double log_sum = (double)top + log(sum_exp);
    lse[2 * (long long)i] = top;
    lse[2 * (long long)i + 1] = (T)log(sum_exp);
    const long long t = target[i];
    double value = 0.0, w_t = 0.0;
    if (has_ignore && t == ignore_index) {
      value = 0.0;
    } else if (t < 0 || t >= classes) {
      value = (double)ce_nan<T>();
      bad += 1.0;
    } else {
      w_t = has_weight ? (double)weight[t] : 1.0;
      value = (1.0 - (double)smoothing) * w_t * (log_sum - (double)row[t]);
      if (smoothing != T(0)) {
        double smooth = 0.0;
        for (int k = 0; k < classes; ++k) smooth += (has_weight ? (double)weight[k] : 1.0) * (log_sum - (double)row[k]);
        value += (double)smoothing / (double)classes * smooth;
      }
    }
    per_sample[i] = (T)value;
    loss_sum += value;
    weight_sum += w_t;
  }
  loss_shared[threadIdx.x] = loss_sum;
  weight_shared[threadIdx.x] = weight_sum;
  bad_shared[threadIdx.x] = bad;
  for (unsigned int stride = 1; stride < blockDim.x; stride *= 2) {
    __syncthreads();
    if (threadIdx.x % (2 * stride) == 0 && threadIdx.x + stride < blockDim.x) {
      loss_shared[threadIdx.x] += loss_shared[threadIdx.x + stride];
      weight_shared[threadIdx.x] += weight_shared[threadIdx.x + stride];
      bad_shared[threadIdx.x] += bad_shared[threadIdx.x + stride];
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const double denominator = weight_shared[0];
    double result = loss_shared[0];
    if (reduction == 1) result = result / denominator;  // 0 / 0 = NaN for an empty batch, as PyTorch
    if (bad_shared[0] > 0.0) result = (double)ce_nan<T>();
    loss[0] = (T)result;
    scale[0] = reduction == 1 ? (T)(1.0 / denominator) : T(1);
    scale[1] = (T)total_weight;
    invalid[0] = bad_shared[0] > 0.0 ? 1 : 0;
  }
}

// grad[i][c] = dloss_i/dz_c * scale[0] * upstream, upstream = 1, grad_output[0] (a device scalar,
// upstream_mode 1) or grad_output[i] (reduction none, upstream_mode 2).
template <typename T>
__global__ void cross_entropy_backward_kernel(const T* __restrict__ logits, const long long* __restrict__ target,
                                              const T* __restrict__ weight, const T* __restrict__ lse,
                                              const T* __restrict__ scale, const T* __restrict__ grad_output,
                                              T* __restrict__ grad, long long total, int classes, T smoothing,
                                              int has_weight, int has_ignore, long long ignore_index,
                                              int upstream_mode) {
  for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    const long long i = index / classes;
    const int c = (int)(index - i * classes);
    const long long t = target[i];
    T g;
    if (has_ignore && t == ignore_index) {
      g = T(0);
    } else if (t < 0 || t >= classes) {
      g = ce_nan<T>();
    } else {
      const T p = exp((logits[index] - lse[2 * i]) - lse[2 * i + 1]);
      const T w_t = has_weight ? weight[t] : T(1);
      g = (T(1) - smoothing) * w_t * (p - (c == t ? T(1) : T(0)));
      if (smoothing != T(0)) {
        const T w_c = has_weight ? weight[c] : T(1);
        g = g + smoothing / (T)classes * (scale[1] * p - w_c);
      }
      g = g * scale[0];
      if (upstream_mode == 1) g = g * grad_output[0];
      if (upstream_mode == 2) g = g * grad_output[i];
    }
    grad[index] = g;
  }
}
