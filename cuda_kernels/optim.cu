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

// SGD (torch.optim.SGD):
//   g = grad + weight_decay * param                        if use_weight_decay
//   buf = g (first_step) or buf * momentum + one_minus_dampening * g   if use_momentum
//   g = g + momentum * buf (nesterov) or buf                if use_momentum
//   param = param - lr * g
template <typename T>
__global__ void sgd_update_kernel(T* __restrict__ param, const T* __restrict__ grad, T* momentum_buf, long long n,
                                  T lr, T weight_decay, T momentum, T one_minus_dampening, int use_weight_decay,
                                  int use_momentum, int nesterov, int first_step) {
  for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < n;
       index += (long long)blockDim.x * gridDim.x) {
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
  for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < n;
       index += (long long)blockDim.x * gridDim.x) {
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
