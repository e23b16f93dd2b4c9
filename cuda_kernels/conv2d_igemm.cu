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
// A block of 256 threads computes a 64 x 64 output tile, each thread a 4 x 4 register block,
// stepping through the reduction 16 at a time. Blocks walk the tiles with a grid-stride loop,
// so any grid gives the same result. The weight gradient splits its long reduction
// (N*OH*OW) into a fixed number of chunks chosen from the shape alone; each chunk writes its
// own partial tile and conv2d_igemm_reduce_kernel adds the chunks in order: no atomics, the
// bits do not depend on the grid. A 1x1 convolution on a 1x1 image is a linear layer, so
// Linear runs on the same kernels.

#define IGEMM_BM 64      // output rows per tile
#define IGEMM_BN 64      // output columns per tile
#define IGEMM_BK 16      // reduction step
#define IGEMM_THREADS 256

// The 4 x 4 register block of thread (ty, tx) += As^T Bs over one reduction step.
template <typename T>
__device__ __forceinline__ void igemm_accumulate(T (*As)[IGEMM_BM], T (*Bs)[IGEMM_BN], int ty, int tx,
                                                 T (*acc)[4]) {
  for (int kk = 0; kk < IGEMM_BK; ++kk) {
    T a[4], b[4];
    for (int i = 0; i < 4; ++i) a[i] = As[kk][ty * 4 + i];
    for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx * 4 + j];
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
  }
}

// y[n][o][p][q] = bias[o] + sum_{c,i,j} w[o][c][i][j] * x[n][g*in_per_group + c][p*s - pad + i*d][q*s - pad + j*d]
template <typename T>
__global__ void conv2d_igemm_forward_kernel(const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ bias,
                                T* __restrict__ y, int batch, int in_channels, int height, int width,
                                int out_channels, int out_h, int out_w, int kernel_h, int kernel_w, int stride_h,
                                int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int groups,
                                int has_bias) {
  __shared__ T As[IGEMM_BK][IGEMM_BM];
  __shared__ T Bs[IGEMM_BK][IGEMM_BN];
  const int in_per_group = in_channels / groups, out_per_group = out_channels / groups;
  const int taps = kernel_h * kernel_w;
  const int depth = in_per_group * taps;  // K
  const long long cols = (long long)batch * out_h * out_w;
  const int row_tiles = (out_per_group + IGEMM_BM - 1) / IGEMM_BM;
  const long long col_tiles = (cols + IGEMM_BN - 1) / IGEMM_BN;
  const long long tiles = (long long)groups * row_tiles * col_tiles;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;

  for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const long long col0 = (tile % col_tiles) * IGEMM_BN;
    const int row0 = (int)((tile / col_tiles) % row_tiles) * IGEMM_BM;
    const int g = (int)(tile / col_tiles / row_tiles);
    T acc[4][4];
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) acc[i][j] = T(0);

    for (int k0 = 0; k0 < depth; k0 += IGEMM_BK) {
      for (int e = tid; e < IGEMM_BK * IGEMM_BM; e += IGEMM_THREADS) {  // weights: k fastest
        const int kk = e % IGEMM_BK, mm = e / IGEMM_BK;
        const int o = row0 + mm, k = k0 + kk;
        As[kk][mm] = (o < out_per_group && k < depth)
                         ? weight[((long long)g * out_per_group + o) * depth + k]
                         : T(0);
      }
      for (int e = tid; e < IGEMM_BK * IGEMM_BN; e += IGEMM_THREADS) {  // gathered input: column fastest
        const int nn = e % IGEMM_BN, kk = e / IGEMM_BN;
        const long long col = col0 + nn;
        const int k = k0 + kk;
        T value = T(0);
        if (col < cols && k < depth) {
          const int c = k / taps, i = (k % taps) / kernel_w, j = k % kernel_w;
          const int q = (int)(col % out_w);
          const long long rest = col / out_w;
          const int p = (int)(rest % out_h), n = (int)(rest / out_h);
          const int h_in = p * stride_h - pad_h + i * dilation_h;
          const int w_in = q * stride_w - pad_w + j * dilation_w;
          if (h_in >= 0 && h_in < height && w_in >= 0 && w_in < width)
            value = x[(((long long)n * in_channels + g * in_per_group + c) * height + h_in) * width + w_in];
        }
        Bs[kk][nn] = value;
      }
      __syncthreads();
      igemm_accumulate<T>(As, Bs, ty, tx, acc);
      __syncthreads();
    }

    for (int i = 0; i < 4; ++i) {  // epilogue: bias, NCHW store
      const int o = row0 + ty * 4 + i;
      if (o >= out_per_group) continue;
      const int channel = g * out_per_group + o;
      const T shift = has_bias ? bias[channel] : T(0);
      for (int j = 0; j < 4; ++j) {
        const long long col = col0 + tx * 4 + j;
        if (col >= cols) continue;
        const int q = (int)(col % out_w);
        const long long rest = col / out_w;
        const int p = (int)(rest % out_h), n = (int)(rest / out_h);
        y[(((long long)n * out_channels + channel) * out_h + p) * out_w + q] = acc[i][j] + shift;
      }
    }
  }
}

// x_grad[n][g*in_per_group + c][h][w] = sum over (o, i, j) whose window position lands on an
// output (p, q) of w[g*out_per_group + o][c][i][j] * dy[n][g*out_per_group + o][p][q]
template <typename T>
__global__ void conv2d_igemm_backward_data_kernel(const T* __restrict__ dy, const T* __restrict__ weight,
                                      T* __restrict__ x_grad, int batch, int in_channels, int height, int width,
                                      int out_channels, int out_h, int out_w, int kernel_h, int kernel_w,
                                      int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h,
                                      int dilation_w, int groups) {
  __shared__ T As[IGEMM_BK][IGEMM_BM];
  __shared__ T Bs[IGEMM_BK][IGEMM_BN];
  const int in_per_group = in_channels / groups, out_per_group = out_channels / groups;
  const int taps = kernel_h * kernel_w;
  const int depth = out_per_group * taps;  // reduction over (o, i, j)
  const long long cols = (long long)batch * height * width;
  const int row_tiles = (in_per_group + IGEMM_BM - 1) / IGEMM_BM;
  const long long col_tiles = (cols + IGEMM_BN - 1) / IGEMM_BN;
  const long long tiles = (long long)groups * row_tiles * col_tiles;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;

  for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const long long col0 = (tile % col_tiles) * IGEMM_BN;
    const int row0 = (int)((tile / col_tiles) % row_tiles) * IGEMM_BM;
    const int g = (int)(tile / col_tiles / row_tiles);
    T acc[4][4];
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) acc[i][j] = T(0);

    for (int k0 = 0; k0 < depth; k0 += IGEMM_BK) {
      for (int e = tid; e < IGEMM_BK * IGEMM_BM; e += IGEMM_THREADS) {  // A[c][(o, i, j)] = w[o][c][i][j]
        const int kk = e % IGEMM_BK, mm = e / IGEMM_BK;
        const int c = row0 + mm, k = k0 + kk;
        T value = T(0);
        if (c < in_per_group && k < depth) {
          const int o = k / taps, tap = k % taps;
          value = weight[(((long long)g * out_per_group + o) * in_per_group + c) * taps + tap];
        }
        As[kk][mm] = value;
      }
      for (int e = tid; e < IGEMM_BK * IGEMM_BN; e += IGEMM_THREADS) {  // B[(o, i, j)][(n, h, w)] = dy or 0
        const int nn = e % IGEMM_BN, kk = e / IGEMM_BN;
        const long long col = col0 + nn;
        const int k = k0 + kk;
        T value = T(0);
        if (col < cols && k < depth) {
          const int o = k / taps, i = (k % taps) / kernel_w, j = k % kernel_w;
          const int w_in = (int)(col % width);
          const long long rest = col / width;
          const int h_in = (int)(rest % height), n = (int)(rest / height);
          const int h_span = h_in + pad_h - i * dilation_h;  // = p * stride_h when tap i reaches h_in
          const int w_span = w_in + pad_w - j * dilation_w;
          if (h_span >= 0 && w_span >= 0 && h_span % stride_h == 0 && w_span % stride_w == 0) {
            const int p = h_span / stride_h, q = w_span / stride_w;
            if (p < out_h && q < out_w)
              value = dy[(((long long)n * out_channels + g * out_per_group + o) * out_h + p) * out_w + q];
          }
        }
        Bs[kk][nn] = value;
      }
      __syncthreads();
      igemm_accumulate<T>(As, Bs, ty, tx, acc);
      __syncthreads();
    }

    for (int i = 0; i < 4; ++i) {
      const int c = row0 + ty * 4 + i;
      if (c >= in_per_group) continue;
      for (int j = 0; j < 4; ++j) {
        const long long col = col0 + tx * 4 + j;
        if (col >= cols) continue;
        const int w_in = (int)(col % width);
        const long long rest = col / width;
        const int h_in = (int)(rest % height), n = (int)(rest / height);
        x_grad[(((long long)n * in_channels + g * in_per_group + c) * height + h_in) * width + w_in] = acc[i][j];
      }
    }
  }
}

// partial[s][g*out_per_group + o][k] = sum over the s-th chunk of (n, p, q) of
// dy[n][g*out_per_group + o][p][q] * x_col[k][(n, p, q)], k = (c, i, j); chunk = `chunk` positions.
template <typename T>
__global__ void conv2d_igemm_backward_weight_kernel(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ partial,
                                        int batch, int in_channels, int height, int width, int out_channels,
                                        int out_h, int out_w, int kernel_h, int kernel_w, int stride_h,
                                        int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w,
                                        int groups, int splits, long long chunk) {
  __shared__ T As[IGEMM_BK][IGEMM_BM];
  __shared__ T Bs[IGEMM_BK][IGEMM_BN];
  const int in_per_group = in_channels / groups, out_per_group = out_channels / groups;
  const int taps = kernel_h * kernel_w;
  const int depth = in_per_group * taps;  // output columns: (c, i, j)
  const long long positions = (long long)batch * out_h * out_w;
  const int row_tiles = (out_per_group + IGEMM_BM - 1) / IGEMM_BM;
  const int col_tiles = (depth + IGEMM_BN - 1) / IGEMM_BN;
  const long long tiles = (long long)splits * groups * row_tiles * col_tiles;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;

  for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int col0 = (int)(tile % col_tiles) * IGEMM_BN;
    long long rest = tile / col_tiles;
    const int row0 = (int)(rest % row_tiles) * IGEMM_BM;
    rest /= row_tiles;
    const int g = (int)(rest % groups);
    const int split = (int)(rest / groups);
    const long long begin = split * chunk;
    const long long end = begin + chunk < positions ? begin + chunk : positions;
    T acc[4][4];
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) acc[i][j] = T(0);

    for (long long l0 = begin; l0 < end; l0 += IGEMM_BK) {
      for (int e = tid; e < IGEMM_BK * IGEMM_BM; e += IGEMM_THREADS) {  // A[o][l] = dy, l = (n, p, q) fastest
        const int ll = e % IGEMM_BK, mm = e / IGEMM_BK;
        const int o = row0 + mm;
        const long long l = l0 + ll;
        T value = T(0);
        if (o < out_per_group && l < end) {
          const int q = (int)(l % out_w);
          const long long r = l / out_w;
          const int p = (int)(r % out_h), n = (int)(r / out_h);
          value = dy[(((long long)n * out_channels + g * out_per_group + o) * out_h + p) * out_w + q];
        }
        As[ll][mm] = value;
      }
      for (int e = tid; e < IGEMM_BK * IGEMM_BN; e += IGEMM_THREADS) {  // B[l][k] = x_col[k][l]
        const int ll = e % IGEMM_BK, nn = e / IGEMM_BK;
        const int k = col0 + nn;
        const long long l = l0 + ll;
        T value = T(0);
        if (k < depth && l < end) {
          const int c = k / taps, i = (k % taps) / kernel_w, j = k % kernel_w;
          const int q = (int)(l % out_w);
          const long long r = l / out_w;
          const int p = (int)(r % out_h), n = (int)(r / out_h);
          const int h_in = p * stride_h - pad_h + i * dilation_h;
          const int w_in = q * stride_w - pad_w + j * dilation_w;
          if (h_in >= 0 && h_in < height && w_in >= 0 && w_in < width)
            value = x[(((long long)n * in_channels + g * in_per_group + c) * height + h_in) * width + w_in];
        }
        Bs[ll][nn] = value;
      }
      __syncthreads();
      igemm_accumulate<T>(As, Bs, ty, tx, acc);
      __syncthreads();
    }

    T* out = partial + (long long)split * out_channels * depth;
    for (int i = 0; i < 4; ++i) {
      const int o = row0 + ty * 4 + i;
      if (o >= out_per_group) continue;
      for (int j = 0; j < 4; ++j) {
        const int k = col0 + tx * 4 + j;
        if (k < depth) out[((long long)g * out_per_group + o) * depth + k] = acc[i][j];
      }
    }
  }
}

// out[e] = sum_{s < splits} partial[s][e], added in ascending s (a fixed order: deterministic).
template <typename T>
__global__ void conv2d_igemm_reduce_kernel(const T* __restrict__ partial, T* __restrict__ out, long long total,
                                           int splits) {
  for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    T sum = partial[index];
    for (int s = 1; s < splits; ++s) sum += partial[(long long)s * total + index];
    out[index] = sum;
  }
}
