// Host shim: lets the CUDA kernel files of cuda_kernels/ compile with g++ so that the test
// harness can run them serially on the CPU (one call per (block, thread) of a launch).
//
// Only what the kernels use is emulated: the execution-space qualifiers, the built-in
// index variables, min/max, sqrt, bit casts and a serial atomicAdd. Kernels using __shared__
// or __syncthreads need one OS thread per CUDA thread and a barrier; none does so far.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local uint3 threadIdx = {0, 0, 0};
inline thread_local uint3 blockIdx = {0, 0, 0};
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

using std::max;
using std::min;
using std::sqrt;  // CUDA's sqrt(float) and sqrt(double) overloads

inline float __int_as_float(int bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

inline int __float_as_int(float value) {
  int bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

inline double __longlong_as_double(long long bits) {
  double value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

inline long long __double_as_longlong(double value) {
  long long bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

template <typename T>
inline T atomicAdd(T* address, T value) {  // serial emulation: no other thread runs meanwhile
  const T old = *address;
  *address = old + value;
  return old;
}

namespace gl_harness {

// Runs `body` once per (block, thread) of a grid x block launch, in CUDA's index order.
template <typename Body>
inline void run_grid(dim3 grid, dim3 block, Body body) {
  gridDim = grid;
  blockDim = block;
  for (unsigned int bz = 0; bz < grid.z; ++bz)
    for (unsigned int by = 0; by < grid.y; ++by)
      for (unsigned int bx = 0; bx < grid.x; ++bx) {
        blockIdx = {bx, by, bz};
        for (unsigned int tz = 0; tz < block.z; ++tz)
          for (unsigned int ty = 0; ty < block.y; ++ty)
            for (unsigned int tx = 0; tx < block.x; ++tx) {
              threadIdx = {tx, ty, tz};
              body();
            }
      }
}

}  // namespace gl_harness
