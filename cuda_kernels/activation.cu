// Element-wise activations for gpulayers: ReLU in one launch forward and one backward.
//
// Compiled at run time by NVRTC through cupy.RawModule (gpulayers/kernels.py): no #include,
// templates instantiated for float and double by name expression. Launched by
// gpulayers/ops/activation_cuda.py for C-contiguous arrays, one thread per element in a
// grid-stride loop over a 64-bit flat index.
//
//   relu_forward_kernel:  y = 0 where x <= 0, else x (NaN kept, as CuPy's maximum(x, 0))
//   relu_backward_kernel: dx = 0 where the saved output y <= 0, else dy (PyTorch's
//                         threshold_backward: NaN outputs pass the gradient through)

template <typename T>
__global__ void relu_forward_kernel(const T* __restrict__ x, T* __restrict__ y, long long total) {
  for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    const T v = x[index];
    y[index] = v <= T(0) ? T(0) : v;
  }
}

template <typename T>
__global__ void relu_backward_kernel(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx,
                                     long long total) {
  for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    dx[index] = y[index] <= T(0) ? T(0) : dy[index];
  }
}
