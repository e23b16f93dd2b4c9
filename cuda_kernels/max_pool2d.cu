// 2-D max pooling (NCHW) for gpulayers, with PyTorch's semantics.
//
// Compiled at run time by NVRTC through cupy.RawModule (gpulayers/kernels.py): no #include,
// templates instantiated for float and double by name expression.
//
// Semantics (PyTorch's max_pool2d): padding counts as -inf; the window is clipped to the
// input (so ceil_mode only changes out_h/out_w, chosen by the caller); ties go to the first
// maximum in row-major window order; a NaN replaces the running maximum (`v > max || isnan(v)`),
// so the last NaN of a window wins. The argmax is a flat index into the input plane
// (h * width + w); a window that holds no input element keeps -inf and an index that no
// input element matches, as PyTorch does.

// Grid-stride loop: each thread takes the flat indices thread, thread + grid size, ... below total.
#define GRID_STRIDE_LOOP(index, total)                                                      \
  for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < (total); \
       index += (long long)blockDim.x * gridDim.x)

template <typename T>
__device__ __forceinline__ T negative_infinity();

template <>
__device__ __forceinline__ float negative_infinity<float>() {
  return -__int_as_float(0x7f800000);
}

template <>
__device__ __forceinline__ double negative_infinity<double>() {
  return -__longlong_as_double(0x7ff0000000000000LL);
}

// One thread per output element (n, c, h_out, w_out); writes the maximum and its argmax.
template <typename T>
__global__ void max_pool2d_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int* __restrict__ argmax,
                                          long long total, int height, int width, int out_h, int out_w, int kernel_h,
                                          int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w,
                                          int dilation_h, int dilation_w) {
  GRID_STRIDE_LOOP(index, total) {
    const int w_out = (int)(index % out_w);
    long long rest = index / out_w;
    const int h_out = (int)(rest % out_h);
    const long long plane = rest / out_h;  // n * channels + c

    int h_start = h_out * stride_h - pad_h;
    int w_start = w_out * stride_w - pad_w;
    const int h_end = min(h_start + (kernel_h - 1) * dilation_h + 1, height);
    const int w_end = min(w_start + (kernel_w - 1) * dilation_w + 1, width);
    while (h_start < 0) h_start += dilation_h;  // first window row inside the input
    while (w_start < 0) w_start += dilation_w;

    const T* x_plane = x + plane * height * width;
    T max_value = negative_infinity<T>();
    int max_index = h_start * width + w_start;
    for (int h = h_start; h < h_end; h += dilation_h) {
      for (int w = w_start; w < w_end; w += dilation_w) {
        const T value = x_plane[(long long)h * width + w];
        if (value > max_value || value != value) {  // value != value: NaN propagates
          max_value = value;
          max_index = h * width + w;
        }
      }
    }
    y[index] = max_value;
    argmax[index] = max_index;
  }
}

// A gather: one thread per input element (n, c, h, w) visits the output windows that can
// contain it and sums dy where the window's argmax is this element, in row-major output
// order (the order in which PyTorch's scatter accumulates).
template <typename T>
__global__ void max_pool2d_backward_kernel(const T* __restrict__ dy, const int* __restrict__ argmax,
                                           T* __restrict__ x_grad, long long total, int height, int width,
                                           int out_h, int out_w, int kernel_h, int kernel_w, int stride_h,
                                           int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w) {
  const int span_h = (kernel_h - 1) * dilation_h + 1;
  const int span_w = (kernel_w - 1) * dilation_w + 1;
  const long long plane_out = (long long)out_h * out_w;
  GRID_STRIDE_LOOP(index, total) {
    const int w = (int)(index % width);
    long long rest = index / width;
    const int h = (int)(rest % height);
    const long long plane = rest / height;

    // Windows h_out with h_out * stride_h - pad_h <= h < h_out * stride_h - pad_h + span_h.
    const int h_first = (h + pad_h < span_h) ? 0 : (h + pad_h - span_h) / stride_h + 1;
    const int h_last = min((h + pad_h) / stride_h + 1, out_h);
    const int w_first = (w + pad_w < span_w) ? 0 : (w + pad_w - span_w) / stride_w + 1;
    const int w_last = min((w + pad_w) / stride_w + 1, out_w);

    const T* dy_plane = dy + plane * plane_out;
    const int* argmax_plane = argmax + plane * plane_out;
    const int self = h * width + w;
    T sum = T(0);
    for (int h_out = h_first; h_out < h_last; ++h_out) {
      for (int w_out = w_first; w_out < w_last; ++w_out) {
        const long long o = (long long)h_out * out_w + w_out;
        if (argmax_plane[o] == self) sum += dy_plane[o];
      }
    }
    x_grad[index] = sum;
  }
}
