// Dropout masks from a counter-based generator (Philox4x32-10) for gpulayers: one launch draws the
// mask and applies it, forward; one launch draws it again and applies it to the gradient, backward.
//
// Channel dropout draws its per-(sample, channel) mask with dropout_mask_kernel.
//
// Compiled at run time by NVRTC through cupy.RawModule (gpulayers/kernels.py): no #include,
// templates instantiated for float and double by name expression. Launched by
// gpulayers/ops/dropout_cuda.py.
//
// Element i of a launch with key `seed` and stream position `offset` takes word i % 4 of
// Philox4x32-10(counter = (i / 4 low, i / 4 high, offset low, offset high), key = seed), so a
// mask depends only on (seed, offset, i): the same on any grid, reproducible, and independent of
// every other launch (each launch advances the offset by one). u = (word >> 8) * 2^-24 in [0, 1);
// the element is kept when u >= p.
//
// The seed and the offset are read from device memory: state = {seed, base}, offset = base +
// increment, where the increment is a launch argument. A CUDA graph records the pointer and the
// increment; writing a new base into the state before each replay gives every replay fresh masks.

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

__device__ __forceinline__ unsigned int philox_mulhi(unsigned int a, unsigned int b) {
  return (unsigned int)(((unsigned long long)a * b) >> 32);
}

// The four 32-bit words of Philox4x32-10 for counter c and key k (c is overwritten).
__device__ __forceinline__ void philox4x32_10(unsigned int c[4], unsigned int k0, unsigned int k1) {
  for (int round = 0; round < 10; ++round) {
    const unsigned int hi0 = philox_mulhi(PHILOX_M0, c[0]);
    const unsigned int lo0 = PHILOX_M0 * c[0];
    const unsigned int hi1 = philox_mulhi(PHILOX_M1, c[2]);
    const unsigned int lo1 = PHILOX_M1 * c[2];
    const unsigned int next0 = hi1 ^ c[1] ^ k0;
    const unsigned int next2 = hi0 ^ c[3] ^ k1;
    c[0] = next0;
    c[1] = lo1;
    c[2] = next2;
    c[3] = lo0;
    k0 += PHILOX_W0;
    k1 += PHILOX_W1;
  }
}

// The four scaled mask values (0 or scale, u >= p keeps) of group `group` at stream position
// `position` under key `key`.
template <typename T>
__device__ __forceinline__ void dropout_group_mask(T m[4], long long group, unsigned long long position,
                                                   unsigned long long key, T p, T scale) {
  unsigned int words[4] = {(unsigned int)group, (unsigned int)((unsigned long long)group >> 32), (unsigned int)position,
                           (unsigned int)(position >> 32)};
  philox4x32_10(words, (unsigned int)key, (unsigned int)(key >> 32));
  for (int lane = 0; lane < 4; ++lane) {
    const T u = (T)(words[lane] >> 8) * (T)(1.0 / 16777216.0);
    m[lane] = (u >= p) ? scale : T(0);
  }
}

// Calls store(i, mask[i]) for every i < n, mask[i] = (u_i >= p) ? scale : 0 drawn at stream position
// state[1] + increment under key state[0]; one thread per group of four consecutive elements (one
// Philox call), a grid-stride loop over the groups.
template <typename T, typename Store>
__device__ __forceinline__ void for_each_mask_value(long long n, const long long* __restrict__ state,
                                                    long long increment, T p, T scale, Store store) {
  const long long groups = (n + 3) / 4;
  const unsigned long long key = (unsigned long long)state[0];
  const unsigned long long position = (unsigned long long)state[1] + (unsigned long long)increment;
  for (long long group = (long long)blockIdx.x * blockDim.x + threadIdx.x; group < groups;
       group += (long long)blockDim.x * gridDim.x) {
    T m[4];
    dropout_group_mask(m, group, position, key, p, scale);
    for (int lane = 0; lane < 4; ++lane) {
      const long long i = group * 4 + lane;
      if (i >= n) break;
      store(i, m[lane]);
    }
  }
}

// y[i] = x[i] * mask[i] over n elements. Forward and backward both run it: the mask is not stored,
// backward draws it again from the forward's (state, increment) and multiplies the gradient by it
// (dx = dy * mask), bitwise what a stored mask would give.
template <typename T>
__global__ void dropout_apply_kernel(const T* __restrict__ x, T* __restrict__ y, long long n,
                                     const long long* __restrict__ state, long long increment, T p, T scale) {
  for_each_mask_value(n, state, increment, p, scale, [&](long long i, T m) { y[i] = x[i] * m; });
}

// The mask alone, over n elements (channel dropout: one value per (sample, channel) plane, the
// same values dropout_apply_kernel would draw for n elements at that position).
template <typename T>
__global__ void dropout_mask_kernel(T* __restrict__ mask, long long n, const long long* __restrict__ state,
                                    long long increment, T p, T scale) {
  for_each_mask_value(n, state, increment, p, scale, [&](long long i, T m) { mask[i] = m; });
}
