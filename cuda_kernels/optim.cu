// Fused optimiser updates for gpulayers: one kernel launch per parameter and step.
//
// Compiled at run time by NVRTC through cupy.RawModule (gpulayers/kernels.py): no #include,
// templates instantiated for float and double by name expression ("sgd_update_kernel<float>").
// Launched by gpulayers/optim/optim_cuda.py for CuPy parameters; NumPy parameters keep the
// element-wise code of gpulayers/optim/sgd.py and adam.py, whose arithmetic these kernels
// repeat operation for operation, in the same order and precision: every scalar that the
// NumPy code derives in double on the host (1 - dampening, lr / (1 - beta1**t), ...) arrives
// here already computed and rounded to T, as NumPy rounds a Python float to the array's
// dtype. The results then differ from the NumPy path only where nvcc contracts a * b + c
// into one fused multiply-add (a rounding or two) and in float32 denormals (-ftz=true).
//
// One thread per element, a grid-stride loop over a 64-bit flat index; the state buffers
// are updated in place. A buffer the options leave unused (momentum_buf without momentum,
// max_exp_avg_sq without AMSGrad) is never touched, so any pointer may stand in for it.

// Grid-stride loop: each thread takes the flat indices thread, thread + grid size, ... below total.
#define GRID_STRIDE_LOOP(index, total)                                                      \
  for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < (total); \
       index += (long long)blockDim.x * gridDim.x)

// SGD (torch.optim.SGD):
//   g = grad + weight_decay * param                        if use_weight_decay
//   buf = g (first_step) or buf * momentum + one_minus_dampening * g   if use_momentum
//   g = g + momentum * buf (nesterov) or buf                if use_momentum
//   param = param - lr * g
template <typename T>
__global__ void sgd_update_kernel(T* __restrict__ param, const T* __restrict__ grad, T* momentum_buf, long long n,
                                  T lr, T weight_decay, T momentum, T one_minus_dampening, int use_weight_decay,
                                  int use_momentum, int nesterov, int first_step) {
  GRID_STRIDE_LOOP(index, n) {
    const T p = param[index];
    T g = grad[index];
    if (use_weight_decay) g = g + weight_decay * p;
    if (use_momentum) {
      T buf;
      if (first_step) {
        buf = g;
      } else {
        buf = momentum_buf[index] * momentum;
        buf = buf + one_minus_dampening * g;
      }
      momentum_buf[index] = buf;
      g = nesterov ? g + momentum * buf : buf;
    }
    param[index] = p - lr * g;
  }
}

// Multi-tensor SGD: the step above for up to 16 parameters of one group in one launch. Tensor k
// comes as the addresses of its param, grad and momentum buffer (device pointers as 64-bit
// integers; slots past `count` are unused) and its element count n_k; the flat grid-stride index
// over sum(n_k) maps to (k, offset) in slot order. first_step applies to every tensor of the launch.
#define MULTI_TENSORS 16
template <typename T>
__global__ void sgd_multi_update_kernel(long long param0, long long param1, long long param2, long long param3,
                                        long long param4, long long param5, long long param6, long long param7,
                                        long long param8, long long param9, long long param10, long long param11,
                                        long long param12, long long param13, long long param14, long long param15,
                                        long long grad0, long long grad1, long long grad2, long long grad3,
                                        long long grad4, long long grad5, long long grad6, long long grad7,
                                        long long grad8, long long grad9, long long grad10, long long grad11,
                                        long long grad12, long long grad13, long long grad14, long long grad15,
                                        long long buf0, long long buf1, long long buf2, long long buf3,
                                        long long buf4, long long buf5, long long buf6, long long buf7,
                                        long long buf8, long long buf9, long long buf10, long long buf11,
                                        long long buf12, long long buf13, long long buf14, long long buf15,
                                        long long n0, long long n1, long long n2, long long n3,
                                        long long n4, long long n5, long long n6, long long n7,
                                        long long n8, long long n9, long long n10, long long n11,
                                        long long n12, long long n13, long long n14, long long n15,
                                        int count, long long total, T lr, T weight_decay, T momentum,
                                        T one_minus_dampening, int use_weight_decay, int use_momentum, int nesterov,
                                        int first_step) {
  const long long params[MULTI_TENSORS] = {param0, param1, param2, param3, param4, param5, param6, param7,
      param8, param9, param10, param11, param12, param13, param14, param15};
  const long long grads[MULTI_TENSORS] = {grad0, grad1, grad2, grad3, grad4, grad5, grad6, grad7,
      grad8, grad9, grad10, grad11, grad12, grad13, grad14, grad15};
  const long long bufs[MULTI_TENSORS] = {buf0, buf1, buf2, buf3, buf4, buf5, buf6, buf7,
      buf8, buf9, buf10, buf11, buf12, buf13, buf14, buf15};
  const long long sizes[MULTI_TENSORS] = {n0, n1, n2, n3, n4, n5, n6, n7,
      n8, n9, n10, n11, n12, n13, n14, n15};
  for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    int k = 0;
    long long offset = index;
    while (k < count - 1 && offset >= sizes[k]) {
      offset -= sizes[k];
      ++k;
    }
    T* param = (T*)params[k];
    const T* grad = (const T*)grads[k];
    T* momentum_buf = (T*)bufs[k];
    const T p = param[offset];
    T g = grad[offset];
    if (use_weight_decay) g = g + weight_decay * p;
    if (use_momentum) {
      T buf;
      if (first_step) {
        buf = g;
      } else {
        buf = momentum_buf[offset] * momentum;
        buf = buf + one_minus_dampening * g;
      }
      momentum_buf[offset] = buf;
      g = nesterov ? g + momentum * buf : buf;
    }
    param[offset] = p - lr * g;
  }
}

// The larger of two values, NaN if either is NaN (numpy.maximum).
template <typename T>
__device__ __forceinline__ T nan_maximum(T a, T b) {
  return (a > b || a != a) ? a : b;
}

// Adam / AdamW (torch.optim.Adam, AdamW, single-tensor formulas), for step t:
//   weight_decay_mode 1 (Adam, L2):  g = grad + weight_decay * param
//   weight_decay_mode 2 (AdamW):     param = param * decay_factor      (decay_factor = 1 - lr * wd)
//   exp_avg = lerp(exp_avg, g, lerp_weight), in torch's two forms:
//       exp_avg + lerp_weight * (g - exp_avg)         if lerp_small_weight (|lerp_weight| < 0.5)
//       g - (g - exp_avg) * lerp_complement           otherwise (lerp_complement = 1 - lerp_weight)
//   exp_avg_sq = exp_avg_sq * beta2 + (one_minus_beta2 * g) * g
//   max_exp_avg_sq = max(max_exp_avg_sq, exp_avg_sq)    if amsgrad (the denominator uses it)
//   denom = sqrt(second) / bias_correction2_sqrt + eps
//   param = param + (neg_step_size * exp_avg) / denom   (neg_step_size = -lr / (1 - beta1**t))
template <typename T>
__global__ void adam_update_kernel(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ exp_avg,
                                   T* __restrict__ exp_avg_sq, T* max_exp_avg_sq, long long n, T weight_decay,
                                   T decay_factor, T lerp_weight, T lerp_complement, T beta2, T one_minus_beta2,
                                   T neg_step_size, T bias_correction2_sqrt, T eps, int weight_decay_mode,
                                   int lerp_small_weight, int amsgrad) {
  GRID_STRIDE_LOOP(index, n) {
    T p = param[index];
    T g = grad[index];
    if (weight_decay_mode == 2) {
      p = p * decay_factor;
    } else if (weight_decay_mode == 1) {
      g = g + weight_decay * p;
    }
    T m = exp_avg[index];
    if (lerp_small_weight) {
      m = m + lerp_weight * (g - m);
    } else {
      m = g - (g - m) * lerp_complement;
    }
    exp_avg[index] = m;
    T v = exp_avg_sq[index] * beta2;
    v = v + (one_minus_beta2 * g) * g;
    exp_avg_sq[index] = v;
    T second = v;
    if (amsgrad) {
      second = nan_maximum(max_exp_avg_sq[index], v);
      max_exp_avg_sq[index] = second;
    }
    const T denom = sqrt(second) / bias_correction2_sqrt + eps;
    param[index] = p + (neg_step_size * m) / denom;
  }
}
