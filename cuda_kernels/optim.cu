// Fused optimiser updates for gpulayers: one multi-tensor kernel launch per optimiser step.
//
// Compiled at run time by NVRTC through cupy.RawModule (gpulayers/kernels.py): no #include,
// templates instantiated for float and double by name expression ("sgd_multi_update_kernel<float>").
// Launched by gpulayers/optim/optim_cuda.py for CuPy parameters; NumPy parameters keep the
// element-wise code of gpulayers/optim/sgd.py, adam.py and rmsprop.py, whose arithmetic these
// kernels repeat operation for operation, in the same order and precision: every scalar that the
// NumPy code derives in double on the host (1 - dampening, lr / (1 - beta1**t), ...) arrives here
// already computed and rounded to T, as NumPy rounds a Python float to the array's dtype. The
// results then differ from the NumPy path only where nvcc contracts a * b + c into one fused
// multiply-add (a rounding or two) and in float32 denormals (-ftz=true).
//
// The launch table (int64 words, built by optim_cuda.py and copied to the device once per step):
//   ROLES rows of `count` addresses (row r, entry k: the r-th array of tensor k: param, grad, state...),
//   count + 1 start offsets of each tensor in the flat index (the last one is `total`),
//   then the per-step scalars (learning rate, bias corrections) as T.
// The per-step scalars are read from device memory, so a captured CUDA graph replays with the
// values of its latest upload. One thread per element, a grid-stride loop over a 64-bit flat
// index; the tensor of an index is found by binary search over the starts. A state array that
// the options leave unused (the momentum buffer without momentum, ...) is never touched, so any
// address may stand in for it.

// Grid-stride loop: each thread takes the flat indices thread, thread + grid size, ... below total.
#define GRID_STRIDE_LOOP(index, total)                                                      \
  for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < (total); \
       index += (long long)blockDim.x * gridDim.x)

// The tensor k whose [starts[k], starts[k + 1]) holds index (the last such k for empty tensors).
__device__ __forceinline__ int tensor_of(const long long* starts, int count, long long index) {
  int low = 0, high = count - 1;
  while (low < high) {
    const int mid = (low + high + 1) / 2;
    if (starts[mid] <= index) {
      low = mid;
    } else {
      high = mid - 1;
    }
  }
  return low;
}

// Array `role` of tensor k as a T pointer.
template <typename T>
__device__ __forceinline__ T* table_array(const long long* table, int count, int role, int k) {
  return reinterpret_cast<T*>(table[(long long)role * count + k]);
}

// The per-step scalars after a table of `roles` rows.
template <typename T>
__device__ __forceinline__ const T* table_scalars(const long long* table, int count, int roles) {
  return reinterpret_cast<const T*>(table + (long long)(roles + 1) * count + 1);
}

// Start a multi-tensor loop body: k, the offset i inside tensor k, and its parameter and gradient.
#define TENSOR_ELEMENT(table, count, roles, index)                                   \
  const int k = tensor_of((table) + (long long)(roles) * (count), (count), (index)); \
  const long long i = (index) - (table)[(long long)(roles) * (count) + k];           \
  T* param = table_array<T>((table), (count), 0, k);                                 \
  const T* grad = table_array<T>((table), (count), 1, k)

// The lerp of torch (a + w * (b - a)), in its two forms for small and large weights.
template <typename T>
__device__ __forceinline__ T torch_lerp(T a, T b, T weight, T complement, int small_weight) {
  return small_weight ? a + weight * (b - a) : b - (b - a) * complement;
}

// SGD (torch.optim.SGD); table roles: param, grad, momentum buffer; scalars: lr.
//   g = grad + weight_decay * param                        if use_weight_decay
//   buf = g (first_step) or buf * momentum + one_minus_dampening * g   if use_momentum
//   g = g + momentum * buf (nesterov) or buf                if use_momentum
//   param = param - lr * g
template <typename T>
__global__ void sgd_multi_update_kernel(const long long* table, int count, long long total, T weight_decay,
                                        T momentum, T one_minus_dampening, int use_weight_decay, int use_momentum,
                                        int nesterov, int first_step) {
  const T lr = table_scalars<T>(table, count, 3)[0];
  GRID_STRIDE_LOOP(index, total) {
    TENSOR_ELEMENT(table, count, 3, index);
    const T p = param[i];
    T g = grad[i];
    if (use_weight_decay) g = g + weight_decay * p;
    if (use_momentum) {
      T* momentum_buf = table_array<T>(table, count, 2, k);
      T buf;
      if (first_step) {
        buf = g;
      } else {
        buf = momentum_buf[i] * momentum;
        buf = buf + one_minus_dampening * g;
      }
      momentum_buf[i] = buf;
      g = nesterov ? g + momentum * buf : buf;
    }
    param[i] = p - lr * g;
  }
}

// The larger of two values, NaN if either is NaN (numpy.maximum).
template <typename T>
__device__ __forceinline__ T nan_maximum(T a, T b) {
  return (a > b || a != a) ? a : b;
}

// Adam / AdamW (torch.optim.Adam, AdamW, single-tensor formulas), for step t; table roles: param,
// grad, exp_avg, exp_avg_sq, max_exp_avg_sq; scalars: decay_factor (1 - lr * wd), neg_step_size
// (-lr / (1 - beta1**t)), bias_correction2_sqrt (sqrt(1 - beta2**t)).
//   weight_decay_mode 1 (Adam, L2):  g = grad + weight_decay * param
//   weight_decay_mode 2 (AdamW):     param = param * decay_factor
//   exp_avg = lerp(exp_avg, g, lerp_weight)             (torch's two forms, lerp_small_weight)
//   exp_avg_sq = exp_avg_sq * beta2 + (one_minus_beta2 * g) * g
//   max_exp_avg_sq = max(max_exp_avg_sq, exp_avg_sq)    if amsgrad (the denominator uses it)
//   denom = sqrt(second) / bias_correction2_sqrt + eps
//   param = param + (neg_step_size * exp_avg) / denom
template <typename T>
__global__ void adam_multi_update_kernel(const long long* table, int count, long long total, T weight_decay,
                                         T lerp_weight, T lerp_complement, T beta2, T one_minus_beta2, T eps,
                                         int weight_decay_mode, int lerp_small_weight, int amsgrad) {
  const T* scalars = table_scalars<T>(table, count, 5);
  const T decay_factor = scalars[0], neg_step_size = scalars[1], bias_correction2_sqrt = scalars[2];
  GRID_STRIDE_LOOP(index, total) {
    TENSOR_ELEMENT(table, count, 5, index);
    T* exp_avg = table_array<T>(table, count, 2, k);
    T* exp_avg_sq = table_array<T>(table, count, 3, k);
    T p = param[i];
    T g = grad[i];
    if (weight_decay_mode == 2) {
      p = p * decay_factor;
    } else if (weight_decay_mode == 1) {
      g = g + weight_decay * p;
    }
    const T m = torch_lerp(exp_avg[i], g, lerp_weight, lerp_complement, lerp_small_weight);
    exp_avg[i] = m;
    T v = exp_avg_sq[i] * beta2;
    v = v + (one_minus_beta2 * g) * g;
    exp_avg_sq[i] = v;
    T second = v;
    if (amsgrad) {
      T* max_exp_avg_sq = table_array<T>(table, count, 4, k);
      second = nan_maximum(max_exp_avg_sq[i], v);
      max_exp_avg_sq[i] = second;
    }
    const T denom = sqrt(second) / bias_correction2_sqrt + eps;
    param[i] = p + (neg_step_size * m) / denom;
  }
}

// RMSprop (torch.optim.RMSprop); table roles: param, grad, square_avg, grad_avg, momentum buffer;
// scalars: neg_lr (-lr).
//   g = grad + weight_decay * param                          if use_weight_decay
//   square_avg = square_avg * alpha + (one_minus_alpha * g) * g
//   centered: grad_avg = lerp(grad_avg, g, one_minus_alpha)   (lerp_complement = 1 - (1 - alpha))
//             avg = sqrt(square_avg - grad_avg * grad_avg)
//   else:     avg = sqrt(square_avg)
//   avg = avg + eps
//   momentum: buf = buf * momentum + g / avg; param = param + neg_lr * buf
//   else:     param = param + (neg_lr * g) / avg
template <typename T>
__global__ void rmsprop_multi_update_kernel(const long long* table, int count, long long total, T weight_decay,
                                            T alpha, T one_minus_alpha, T lerp_complement, T eps, T momentum,
                                            int use_weight_decay,
                                            int centered, int lerp_small_weight, int use_momentum) {
  const T neg_lr = table_scalars<T>(table, count, 5)[0];
  GRID_STRIDE_LOOP(index, total) {
    TENSOR_ELEMENT(table, count, 5, index);
    T* square_avg = table_array<T>(table, count, 2, k);
    const T p = param[i];
    T g = grad[i];
    if (use_weight_decay) g = g + weight_decay * p;
    T v = square_avg[i] * alpha;
    v = v + (one_minus_alpha * g) * g;
    square_avg[i] = v;
    T avg;
    if (centered) {
      T* grad_avg = table_array<T>(table, count, 3, k);
      const T m = torch_lerp(grad_avg[i], g, one_minus_alpha, lerp_complement, lerp_small_weight);
      grad_avg[i] = m;
      avg = sqrt(v - m * m);
    } else {
      avg = sqrt(v);
    }
    avg = avg + eps;
    if (use_momentum) {
      T* momentum_buf = table_array<T>(table, count, 4, k);
      T buf = momentum_buf[i] * momentum;
      buf = buf + g / avg;
      momentum_buf[i] = buf;
      param[i] = p + neg_lr * buf;
    } else {
      param[i] = p + (neg_lr * g) / avg;
    }
  }
}
