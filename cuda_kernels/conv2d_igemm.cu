// 2-D convolution (NCHW) as implicit GEMM: no column matrix, no cuBLAS.
//
// Compiled at run time by NVRTC through cupy.RawModule (gpulayers/kernels.py): no #include.
// Each kernel is a template instantiated for float and double; it accumulates in T.
//
// Per group g, the three products of a convolution are GEMMs whose operands are gathered on
// the fly while tiles are loaded into shared memory:
//   forward      y  (out_c/g x N*OH*OW) = W (out_c/g x K)        * X_col (K x N*OH*OW),  K = in_c/g*KH*KW
//   input grad   dx (in_c/g  x N*H*W)   = W^T (in_c/g x out_c/g*KH*KW) * dY_gather (.. x N*H*W)
//   weight grad  dW (out_c/g x K)       = dY (out_c/g x N*OH*OW) * X_col^T (N*OH*OW x K)
// A block of 256 threads (16 x 16) computes a 64 x 64 output tile, each thread a 4 x 4
// register block of rows ty + 16 i and columns tx + 16 j (so neighbouring threads touch
// neighbouring shared-memory words and output addresses), stepping through the reduction 16
// at a time. Each thread gathers the same tile column (or reduction position) at every step,
// so its coordinates are decoded once per tile (or step), not once per element. Flat
// positions (N*OH*OW, N*H*W) are 32-bit; the launcher checks that they fit. Blocks walk the tiles with a grid-stride loop,
// so any grid gives the same result. The weight gradient splits its long reduction
// (N*OH*OW) into a fixed number of chunks chosen from the shape alone; each chunk writes its
// own partial tile and conv2d_igemm_reduce_kernel adds the chunks in order: no atomics, the
// bits do not depend on the grid. A 1x1 convolution on a 1x1 image is a linear layer, so
// Linear runs on the same kernels.

// Grid-stride loop: each thread takes the flat indices thread, thread + grid size, ... below total.
#define GRID_STRIDE_LOOP(index, total)                                                      \
  for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < (total); \
       index += (long long)blockDim.x * gridDim.x)

#define IGEMM_BM 64      // output rows per tile
#define IGEMM_BN 64      // output columns per tile
#define IGEMM_BK 16      // reduction step
#define IGEMM_THREADS 256

// The output tiles of `layers` GEMMs (one per group, or per group and split) of rows x cols
// each, numbered column tile fastest, then row tile, then layer; blocks walk them in a
// grid-stride loop over `count`.
struct IgemmTiles {
  int row_tiles, col_tiles;
  long long count;
  __device__ IgemmTiles(int rows, int cols, long long layers)
      : row_tiles((rows + IGEMM_BM - 1) / IGEMM_BM),
        col_tiles((cols + IGEMM_BN - 1) / IGEMM_BN),
        count(layers * row_tiles * col_tiles) {}
  // The first row and column of tile `tile`; returns its layer.
  __device__ long long decode(long long tile, int& row0, int& col0) const {
    col0 = (int)(tile % col_tiles) * IGEMM_BN;
    const long long rest = tile / col_tiles;
    row0 = (int)(rest % row_tiles) * IGEMM_BM;
    return rest / row_tiles;
  }
};

// x_n[c][h0 + i * dilation_h][w0 + j * dilation_w] for the column-matrix row k = (c, i, j) of a
// window whose top-left corner is (h0, w0); 0 in the padding.
template <typename T>
__device__ __forceinline__ T igemm_window_value(const T* x_n, int k, int kernel_h, int kernel_w, int h0, int w0,
                                                int dilation_h, int dilation_w, int height, int width) {
  const int taps = kernel_h * kernel_w;
  const int c = k / taps, tap = k - c * taps;
  const int i = tap / kernel_w, j = tap - i * kernel_w;
  const int h_in = h0 + i * dilation_h, w_in = w0 + j * dilation_w;
  if (h_in < 0 || h_in >= height || w_in < 0 || w_in >= width) return T(0);
  return x_n[c * (long long)height * width + (long long)h_in * width + w_in];
}

// The 4 x 4 register block of thread (ty, tx) += As^T Bs over one reduction step.
template <typename T>
__device__ __forceinline__ void igemm_accumulate(T (*As)[IGEMM_BM], T (*Bs)[IGEMM_BN], int ty, int tx,
                                                 T (*acc)[4]) {
  for (int kk = 0; kk < IGEMM_BK; ++kk) {
    T a[4], b[4];
    for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
    for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx + 16 * j];
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
  }
}

template <typename T>
__device__ __forceinline__ void igemm_zero(T (*acc)[4]) {
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) acc[i][j] = T(0);
}

// y[n][o][p][q] = bias[o] + sum_{c,i,j} w[o][c][i][j] * x[n][g*in_per_group + c][p*s - pad + i*d][q*s - pad + j*d]
template <typename T>
__global__ void conv2d_igemm_forward_kernel(const T* __restrict__ x, const T* __restrict__ weight,
                                            const T* __restrict__ bias, T* __restrict__ y, int batch,
                                            int in_channels, int height, int width, int out_channels, int out_h,
                                            int out_w, int kernel_h, int kernel_w, int stride_h, int stride_w,
                                            int pad_h, int pad_w, int dilation_h, int dilation_w, int groups,
                                            int has_bias) {
  __shared__ T As[IGEMM_BK][IGEMM_BM];
  __shared__ T Bs[IGEMM_BK][IGEMM_BN];
  const int in_per_group = in_channels / groups, out_per_group = out_channels / groups;
  const int taps = kernel_h * kernel_w;
  const int depth = in_per_group * taps;  // K
  const int plane_out = out_h * out_w;
  const int cols = batch * plane_out;
  const long long plane_in = (long long)height * width;
  const IgemmTiles tiles(out_per_group, cols, groups);
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int a_k = tid % IGEMM_BK, a_row = tid / IGEMM_BK;    // weight loads: k fixed, rows a_row + 16 r
  const int b_col = tid % IGEMM_BN, b_k = tid / IGEMM_BN;    // input loads: column fixed, k = b_k + 4 r

  for (long long tile = blockIdx.x; tile < tiles.count; tile += gridDim.x) {
    int row0, col0;
    const int g = (int)tiles.decode(tile, row0, col0);
    // The one column this thread gathers: its sample and window origin.
    const int col = col0 + b_col;
    const bool col_ok = col < cols;
    const int n = col_ok ? col / plane_out : 0;
    const int pq = col - n * plane_out;
    const int h0 = (pq / out_w) * stride_h - pad_h, w0 = (pq % out_w) * stride_w - pad_w;
    const T* x_n = x + ((long long)n * in_channels + (long long)g * in_per_group) * plane_in;
    const T* w_g = weight + (long long)g * out_per_group * depth;
    T acc[4][4];
    igemm_zero<T>(acc);

    for (int k0 = 0; k0 < depth; k0 += IGEMM_BK) {
      const int ka = k0 + a_k;
      for (int r = 0; r < IGEMM_BM / 16; ++r) {
        const int o = row0 + a_row + 16 * r;
        As[a_k][a_row + 16 * r] = (o < out_per_group && ka < depth) ? w_g[(long long)o * depth + ka] : T(0);
      }
      for (int r = 0; r < IGEMM_BK / 4; ++r) {
        const int kk = b_k + 4 * r, k = k0 + kk;
        Bs[kk][b_col] = (col_ok && k < depth) ? igemm_window_value<T>(x_n, k, kernel_h, kernel_w, h0, w0, dilation_h,
                                                                      dilation_w, height, width)
                                              : T(0);
      }
      __syncthreads();
      igemm_accumulate<T>(As, Bs, ty, tx, acc);
      __syncthreads();
    }

    for (int j = 0; j < 4; ++j) {  // epilogue: bias, NCHW store
      const int c = col0 + tx + 16 * j;
      if (c >= cols) continue;
      const int m = c / plane_out, spatial = c - m * plane_out;
      for (int i = 0; i < 4; ++i) {
        const int o = row0 + ty + 16 * i;
        if (o >= out_per_group) continue;
        const int channel = g * out_per_group + o;
        y[((long long)m * out_channels + channel) * plane_out + spatial] = acc[i][j] + (has_bias ? bias[channel] : T(0));
      }
    }
  }
}

// x_grad[n][g*in_per_group + c][h][w] = sum over (o, i, j) whose window position lands on an
// output (p, q) of w[g*out_per_group + o][c][i][j] * dy[n][g*out_per_group + o][p][q]
template <typename T>
__global__ void conv2d_igemm_backward_data_kernel(const T* __restrict__ dy, const T* __restrict__ weight,
                                                  T* __restrict__ x_grad, int batch, int in_channels, int height,
                                                  int width, int out_channels, int out_h, int out_w, int kernel_h,
                                                  int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w,
                                                  int dilation_h, int dilation_w, int groups) {
  __shared__ T As[IGEMM_BK][IGEMM_BM];
  __shared__ T Bs[IGEMM_BK][IGEMM_BN];
  const int in_per_group = in_channels / groups, out_per_group = out_channels / groups;
  const int taps = kernel_h * kernel_w;
  const int depth = out_per_group * taps;  // reduction over (o, i, j)
  const int plane_in = height * width;
  const int cols = batch * plane_in;
  const long long plane_out = (long long)out_h * out_w;
  const IgemmTiles tiles(in_per_group, cols, groups);
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int a_k = tid % IGEMM_BK, a_row = tid / IGEMM_BK;
  const int b_col = tid % IGEMM_BN, b_k = tid / IGEMM_BN;

  for (long long tile = blockIdx.x; tile < tiles.count; tile += gridDim.x) {
    int row0, col0;
    const int g = (int)tiles.decode(tile, row0, col0);
    const int col = col0 + b_col;  // the input position this thread gathers for
    const bool col_ok = col < cols;
    const int n = col_ok ? col / plane_in : 0;
    const int hw = col - n * plane_in;
    const int h_base = hw / width + pad_h, w_base = hw % width + pad_w;
    const T* dy_n = dy + ((long long)n * out_channels + (long long)g * out_per_group) * plane_out;
    T acc[4][4];
    igemm_zero<T>(acc);

    for (int k0 = 0; k0 < depth; k0 += IGEMM_BK) {
      const int ka = k0 + a_k;  // A[c][(o, tap)] = w[o][c][tap]
      const int oa = ka / taps, tapa = ka - oa * taps;
      const T* w_o = weight + ((long long)g * out_per_group + oa) * in_per_group * taps + tapa;
      for (int r = 0; r < IGEMM_BM / 16; ++r) {
        const int c = row0 + a_row + 16 * r;
        As[a_k][a_row + 16 * r] = (c < in_per_group && ka < depth) ? w_o[(long long)c * taps] : T(0);
      }
      for (int r = 0; r < IGEMM_BK / 4; ++r) {  // B[(o, i, j)][position] = dy, or 0 where no window lands
        const int kk = b_k + 4 * r, k = k0 + kk;
        T value = T(0);
        if (col_ok && k < depth) {
          const int o = k / taps, tap = k - o * taps;
          const int i = tap / kernel_w, j = tap - i * kernel_w;
          const int h_span = h_base - i * dilation_h;  // = p * stride_h when tap i reaches this row
          const int w_span = w_base - j * dilation_w;
          if (h_span >= 0 && w_span >= 0 && h_span % stride_h == 0 && w_span % stride_w == 0) {
            const int p = h_span / stride_h, q = w_span / stride_w;
            if (p < out_h && q < out_w) value = dy_n[o * plane_out + (long long)p * out_w + q];
          }
        }
        Bs[kk][b_col] = value;
      }
      __syncthreads();
      igemm_accumulate<T>(As, Bs, ty, tx, acc);
      __syncthreads();
    }

    for (int j = 0; j < 4; ++j) {
      const int c_pos = col0 + tx + 16 * j;
      if (c_pos >= cols) continue;
      const int m = c_pos / plane_in, spatial = c_pos - m * plane_in;
      for (int i = 0; i < 4; ++i) {
        const int c = row0 + ty + 16 * i;
        if (c < in_per_group)
          x_grad[((long long)m * in_channels + g * in_per_group + c) * plane_in + spatial] = acc[i][j];
      }
    }
  }
}

// partial[s][g*out_per_group + o][k] = sum over the s-th chunk of (n, p, q) of
// dy[n][g*out_per_group + o][p][q] * x_col[k][(n, p, q)], k = (c, i, j); chunk = `chunk` positions.
// With has_bias, each split's slab of out_channels * K weight values is followed by out_channels
// bias values, partial[s][out_channels * K + channel] = the chunk's sum of dy[n][channel][p][q]:
// the blocks of the first column tile add up the dy tile they load anyway (in the same fixed
// order), so the bias gradient costs no launch of its own.
template <typename T>
__global__ void conv2d_igemm_backward_weight_kernel(const T* __restrict__ x, const T* __restrict__ dy,
                                                    T* __restrict__ partial, int batch, int in_channels, int height,
                                                    int width, int out_channels, int out_h, int out_w, int kernel_h,
                                                    int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w,
                                                    int dilation_h, int dilation_w, int groups, int splits,
                                                    long long chunk, int has_bias) {
  __shared__ T As[IGEMM_BK][IGEMM_BM];
  __shared__ T Bs[IGEMM_BK][IGEMM_BN];
  const int in_per_group = in_channels / groups, out_per_group = out_channels / groups;
  const int taps = kernel_h * kernel_w;
  const int depth = in_per_group * taps;  // output columns: (c, i, j)
  const int plane_out = out_h * out_w;
  const int positions = batch * plane_out;
  const long long plane_in = (long long)height * width;
  const IgemmTiles tiles(out_per_group, depth, (long long)splits * groups);
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int l_off = tid % IGEMM_BK, row = tid / IGEMM_BK;  // both loads: position fixed per step

  for (long long tile = blockIdx.x; tile < tiles.count; tile += gridDim.x) {
    int row0, col0;
    const long long rest = tiles.decode(tile, row0, col0);
    const int g = (int)(rest % groups);
    const int split = (int)(rest / groups);
    const long long begin = split * chunk;
    const int end = (int)(begin + chunk < positions ? begin + chunk : positions);
    const bool bias_sums = has_bias && col0 == 0 && tx == 0;  // rows ty + 16 i of this tile
    T acc[4][4];
    T bias_acc[4] = {T(0), T(0), T(0), T(0)};
    igemm_zero<T>(acc);

    for (int l0 = (int)begin; l0 < end; l0 += IGEMM_BK) {
      const int l = l0 + l_off;
      const bool l_ok = l < end;
      const int n = l_ok ? l / plane_out : 0;
      const int pq = l - n * plane_out;
      const int p = pq / out_w, q = pq - p * out_w;
      const T* dy_l = dy + ((long long)n * out_channels + (long long)g * out_per_group) * plane_out + pq;
      const T* x_n = x + ((long long)n * in_channels + (long long)g * in_per_group) * plane_in;
      const int h0 = p * stride_h - pad_h, w0 = q * stride_w - pad_w;
      for (int r = 0; r < IGEMM_BM / 16; ++r) {  // A[o][l] = dy
        const int o = row0 + row + 16 * r;
        As[l_off][row + 16 * r] = (l_ok && o < out_per_group) ? dy_l[(long long)o * plane_out] : T(0);
      }
      for (int r = 0; r < IGEMM_BN / 16; ++r) {  // B[l][k] = x_col[k][l]
        const int k = col0 + row + 16 * r;
        Bs[l_off][row + 16 * r] = (l_ok && k < depth) ? igemm_window_value<T>(x_n, k, kernel_h, kernel_w, h0, w0,
                                                                              dilation_h, dilation_w, height, width)
                                                      : T(0);
      }
      __syncthreads();
      igemm_accumulate<T>(As, Bs, ty, tx, acc);
      if (bias_sums)
        for (int kk = 0; kk < IGEMM_BK; ++kk)
          for (int i = 0; i < 4; ++i) bias_acc[i] += As[kk][ty + 16 * i];
      __syncthreads();
    }

    const long long weight_size = (long long)out_channels * depth;
    T* out = partial + (long long)split * (weight_size + (has_bias ? out_channels : 0));
    for (int i = 0; i < 4; ++i) {
      const int o = row0 + ty + 16 * i;
      if (o >= out_per_group) continue;
      for (int j = 0; j < 4; ++j) {
        const int k = col0 + tx + 16 * j;
        if (k < depth) out[((long long)g * out_per_group + o) * depth + k] = acc[i][j];
      }
      if (bias_sums) out[weight_size + g * out_per_group + o] = bias_acc[i];
    }
  }
}

// out[e] = sum_{s < splits} partial[s][e], added in ascending s (a fixed order: deterministic).
template <typename T>
__global__ void conv2d_igemm_reduce_kernel(const T* __restrict__ partial, T* __restrict__ out, long long total,
                                           int splits) {
  GRID_STRIDE_LOOP(index, total) {
    T sum = partial[index];
    for (int s = 1; s < splits; ++s) sum += partial[(long long)s * total + index];
    out[index] = sum;
  }
}
