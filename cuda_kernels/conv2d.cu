// 2-D convolution (NCHW) building blocks for gpulayers.
//
// Compiled at run time by NVRTC through cupy.RawModule (gpulayers/kernels.py), so this
// file has no #include: NVRTC has no system headers. Every kernel is a template
// instantiated for float and double by name expression ("im2col_kernel<float>").
//
// Style: one thread per output element, a grid-stride loop (GRID_STRIDE_LOOP) over a 64-bit
// flat index that is decoded into coordinates at the top (unravel4), and backward kernels written as
// gathers (one thread per gradient element summing everything that points at it) so
// results are deterministic without floating-point atomics.
//
// Two paths (chosen in gpulayers/ops/conv2d_cuda.py):
//   * GEMM path: im2col_kernel -> cuBLAS GEMM per group -> gemm_to_nchw_kernel (+bias);
//     backward: dW by GEMM, dcol by GEMM -> col2im_kernel (gather) for dx.
//     The column matrix is laid out group-major as (C * kernel_h * kernel_w, N * out_h * out_w),
//     so each group is one contiguous (K, N * P) slab and one large GEMM.
//   * direct path, for convolutions where each output sees few inputs (e.g. depthwise,
//     one input channel per group): conv2d_direct_* kernels, no intermediate buffers.

// Grid-stride loop: each thread takes the flat indices thread, thread + grid size, ... below total.
#define GRID_STRIDE_LOOP(index, total)                                                      \
  for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < (total); \
       index += (long long)blockDim.x * gridDim.x)

// The coordinates (a, b, c, d) of a row-major flat index over (*, size_b, size_c, size_d).
__device__ __forceinline__ void unravel4(long long index, int size_b, int size_c, int size_d, int& a, int& b, int& c,
                                         int& d) {
  d = (int)(index % size_d);
  index /= size_d;
  c = (int)(index % size_c);
  index /= size_c;
  b = (int)(index % size_b);
  a = (int)(index / size_b);
}

// The window parameters every kernel here ends with, in the order of the launchers'
// LaunchGeometry.window_args() (gpulayers/ops/_window.py).
#define CONV_WINDOW_PARAMS                                                                                      \
  int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, \
      int out_h, int out_w

// The output coordinate whose window puts kernel offset k on input coordinate pos, or -1 if none.
__device__ __forceinline__ int window_source(int pos, int pad, int k, int dilation, int stride, int out) {
  const int span = pos + pad - k * dilation;  // = out_pos * stride when offset k lands on pos
  if (span < 0 || span % stride != 0) return -1;
  const int out_pos = span / stride;
  return out_pos < out ? out_pos : -1;
}

// The window geometry of a convolution, for the gathers of the backward kernels.
struct ConvWindow {
  int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, out_h, out_w;

  // Calls visit(i, j, h_out, w_out) for each kernel offset (i, j), in row-major order, whose
  // window at output (h_out, w_out) puts it on input (h, w).
  template <typename Visit>
  __device__ __forceinline__ void for_each_source(int h, int w, Visit visit) const {
    for (int i = 0; i < kernel_h; ++i) {
      const int h_out = window_source(h, pad_h, i, dilation_h, stride_h, out_h);
      if (h_out < 0) continue;
      for (int j = 0; j < kernel_w; ++j) {
        const int w_out = window_source(w, pad_w, j, dilation_w, stride_w, out_w);
        if (w_out >= 0) visit(i, j, h_out, w_out);
      }
    }
  }
};

// ---------------------------------------------------------------------------------------
// GEMM path
// ---------------------------------------------------------------------------------------

// col[(c * kernel_h + i) * kernel_w + j][n][h_out][w_out] = x[n][c][h_in][w_in], 0 in padding.
// One thread per (c, n, h_out, w_out); it writes kernel_h * kernel_w column rows.
template <typename T>
__global__ void im2col_kernel(const T* __restrict__ x, T* __restrict__ col, long long total, int batch,
                              int channels, int height, int width, CONV_WINDOW_PARAMS) {
  const long long plane_out = (long long)out_h * out_w;
  const long long row_len = (long long)batch * plane_out;  // length of one column-matrix row
  GRID_STRIDE_LOOP(index, total) {
    int c, n, h_out, w_out;
    unravel4(index, batch, out_h, out_w, c, n, h_out, w_out);

    const T* x_plane = x + ((long long)n * channels + c) * height * width;
    T* col_ptr = col + (long long)c * kernel_h * kernel_w * row_len + n * plane_out + (long long)h_out * out_w + w_out;
    const int h_start = h_out * stride_h - pad_h;
    const int w_start = w_out * stride_w - pad_w;
    for (int i = 0; i < kernel_h; ++i) {
      const int h_in = h_start + i * dilation_h;
      const bool row_inside = h_in >= 0 && h_in < height;
      for (int j = 0; j < kernel_w; ++j) {
        const int w_in = w_start + j * dilation_w;
        *col_ptr = (row_inside && w_in >= 0 && w_in < width) ? x_plane[(long long)h_in * width + w_in] : T(0);
        col_ptr += row_len;
      }
    }
  }
}

// x_grad[n][c][h][w] = sum of the column entries that im2col copied from (n, c, h, w).
// A gather: one thread per input element visits the kernel offsets (i, j) whose window
// position lands on an integer output coordinate inside the output.
template <typename T>
__global__ void col2im_kernel(const T* __restrict__ col, T* __restrict__ x_grad, long long total, int batch,
                              int channels, int height, int width, CONV_WINDOW_PARAMS) {
  const ConvWindow window = {kernel_h, kernel_w, stride_h, stride_w, pad_h,
                             pad_w, dilation_h, dilation_w, out_h, out_w};
  const long long plane_out = (long long)out_h * out_w;
  const long long row_len = (long long)batch * plane_out;
  GRID_STRIDE_LOOP(index, total) {
    int n, c, h, w;
    unravel4(index, channels, height, width, n, c, h, w);

    const T* col_c = col + (long long)c * kernel_h * kernel_w * row_len + n * plane_out;
    T sum = T(0);
    window.for_each_source(h, w, [&](int i, int j, int h_out, int w_out) {
      sum += col_c[(long long)(i * kernel_w + j) * row_len + (long long)h_out * out_w + w_out];
    });
    x_grad[index] = sum;
  }
}

// y[n][c][p] = gemm_out[c][n][p] (+ bias[c]): the GEMM result is channel-major; NCHW wants
// batch-major. has_bias == 0 leaves bias unread (any valid pointer may be passed).
template <typename T>
__global__ void gemm_to_nchw_kernel(const T* __restrict__ gemm_out, const T* __restrict__ bias, T* __restrict__ y,
                                    long long total, int has_bias, int batch, int channels, long long plane) {
  GRID_STRIDE_LOOP(index, total) {
    const long long p = index % plane;
    const long long rest = index / plane;
    const int c = (int)(rest % channels);
    const int n = (int)(rest / channels);
    T value = gemm_out[((long long)c * batch + n) * plane + p];
    if (has_bias) value += bias[c];
    y[index] = value;
  }
}

// ---------------------------------------------------------------------------------------
// Direct path (any groups; worthwhile when in_channels / groups is small, e.g. depthwise)
// ---------------------------------------------------------------------------------------

// One thread per output element (n, oc, h_out, w_out).
template <typename T>
__global__ void conv2d_direct_forward_kernel(const T* __restrict__ x, const T* __restrict__ weight,
                                             const T* __restrict__ bias, T* __restrict__ y, long long total,
                                             int has_bias, int channels, int height, int width, int out_channels,
                                             int groups, CONV_WINDOW_PARAMS) {
  const int in_per_group = channels / groups;
  const int out_per_group = out_channels / groups;
  GRID_STRIDE_LOOP(index, total) {
    int n, oc, h_out, w_out;
    unravel4(index, out_channels, out_h, out_w, n, oc, h_out, w_out);

    const int g = oc / out_per_group;
    const int h_start = h_out * stride_h - pad_h;
    const int w_start = w_out * stride_w - pad_w;
    T sum = T(0);
    for (int cg = 0; cg < in_per_group; ++cg) {
      const T* x_plane = x + ((long long)n * channels + (long long)g * in_per_group + cg) * height * width;
      const T* w_ptr = weight + ((long long)oc * in_per_group + cg) * kernel_h * kernel_w;
      for (int i = 0; i < kernel_h; ++i) {
        const int h_in = h_start + i * dilation_h;
        if (h_in < 0 || h_in >= height) continue;
        for (int j = 0; j < kernel_w; ++j) {
          const int w_in = w_start + j * dilation_w;
          if (w_in < 0 || w_in >= width) continue;
          sum += x_plane[(long long)h_in * width + w_in] * w_ptr[i * kernel_w + j];
        }
      }
    }
    if (has_bias) sum += bias[oc];
    y[index] = sum;
  }
}

// One thread per input element (n, c, h, w): gathers dy * weight over the output channels
// of its group and the kernel offsets that reach it.
template <typename T>
__global__ void conv2d_direct_backward_data_kernel(const T* __restrict__ dy, const T* __restrict__ weight,
                                                   T* __restrict__ x_grad, long long total, int channels,
                                                   int height, int width, int out_channels, int groups,
                                                   CONV_WINDOW_PARAMS) {
  const ConvWindow window = {kernel_h, kernel_w, stride_h, stride_w, pad_h,
                             pad_w, dilation_h, dilation_w, out_h, out_w};
  const int in_per_group = channels / groups;
  const int out_per_group = out_channels / groups;
  const long long plane_out = (long long)out_h * out_w;
  GRID_STRIDE_LOOP(index, total) {
    int n, c, h, w;
    unravel4(index, channels, height, width, n, c, h, w);

    const int g = c / in_per_group;
    const int cg = c % in_per_group;
    T sum = T(0);
    for (int m = 0; m < out_per_group; ++m) {
      const int oc = g * out_per_group + m;
      const T* dy_plane = dy + ((long long)n * out_channels + oc) * plane_out;
      const T* w_ptr = weight + ((long long)oc * in_per_group + cg) * kernel_h * kernel_w;
      window.for_each_source(h, w, [&](int i, int j, int h_out, int w_out) {
        sum += dy_plane[(long long)h_out * out_w + w_out] * w_ptr[i * kernel_w + j];
      });
    }
    x_grad[index] = sum;
  }
}

// Partial weight gradients: partial[(oc, cg, i, j)][lane] sums dy * x over the (n, h_out, w_out)
// positions q with q % lanes == lane. The caller sums over lanes; a fixed lane count (chosen
// from the shape alone) keeps the result independent of the launch grid. Neighbouring
// threads take neighbouring lanes, so their loads of dy and x are coalesced. A thread steps
// q by `lanes` as a mixed-radix (n, h_out, w_out) addition, with no division in the loop.
// Rows past the weight's out_channels * in_per_group * kernel_h * kernel_w elements (when the
// caller allocates them) are bias rows: partial[weight_size + oc][lane] sums dy[n][oc] over the
// same positions, so one reduction over the lanes gives the bias gradient too.
template <typename T>
__global__ void conv2d_direct_backward_weight_kernel(const T* __restrict__ x, const T* __restrict__ dy,
                                                     T* __restrict__ partial, long long total, int lanes, int batch,
                                                     int channels, int height, int width, int out_channels,
                                                     int groups, CONV_WINDOW_PARAMS) {
  const int in_per_group = channels / groups;
  const int out_per_group = out_channels / groups;
  const long long plane_out = (long long)out_h * out_w;
  const int step_w = lanes % out_w;  // `lanes` in the radix (n, h_out, w_out)
  const int step_h = (lanes / out_w) % out_h;
  const int step_n = (lanes / out_w) / out_h;
  const long long weight_size = (long long)out_channels * in_per_group * kernel_h * kernel_w;
  GRID_STRIDE_LOOP(index, total) {
    const int lane = (int)(index % lanes);
    const long long row = index / lanes;
    const bool bias_row = row >= weight_size;
    int oc, cg, i, j;
    if (bias_row) {
      oc = (int)(row - weight_size);
      cg = i = j = 0;
    } else {
      unravel4(row, in_per_group, kernel_h, kernel_w, oc, cg, i, j);
    }

    const int c = (oc / out_per_group) * in_per_group + cg;
    const int h_offset = i * dilation_h - pad_h;
    const int w_offset = j * dilation_w - pad_w;
    int w_out = lane % out_w;
    int h_out = (lane / out_w) % out_h;
    int n = (lane / out_w) / out_h;
    T sum = T(0);
    while (n < batch) {
      const T g = dy[((long long)n * out_channels + oc) * plane_out + (long long)h_out * out_w + w_out];
      if (bias_row) {
        sum += g;
      } else {
        const int h_in = h_out * stride_h + h_offset;
        const int w_in = w_out * stride_w + w_offset;
        if (h_in >= 0 && h_in < height && w_in >= 0 && w_in < width)
          sum += g * x[(((long long)n * channels + c) * height + h_in) * width + w_in];
      }
      w_out += step_w;
      int carry = 0;
      if (w_out >= out_w) {
        w_out -= out_w;
        carry = 1;
      }
      h_out += step_h + carry;
      carry = 0;
      if (h_out >= out_h) {
        h_out -= out_h;
        carry = 1;
      }
      n += step_n + carry;
    }
    partial[index] = sum;
  }
}
