// Host shim: lets the CUDA kernel files of cuda_kernels/ compile with g++ so that the test
// harness can run them serially on the CPU (one call per (block, thread) of a launch).
//
// Only what the kernels use is emulated: the execution-space qualifiers, the built-in
// index variables, min/max, sqrt, bit casts and a serial atomicAdd.
//
// Cooperative kernels (those using __shared__ or __syncthreads) run one block at a time with
// one fiber (ucontext) per CUDA thread, all on the calling OS thread. The scheduler resumes
// every fiber of the block until it reaches __syncthreads or returns; when all of them wait
// at the barrier the next phase starts. Fibers run in ascending thread order in even phases
// and descending order in odd ones, so a read of another thread's shared-memory write that
// lacks a barrier sees a stale value whichever thread wrote it. __shared__ becomes `static`:
// one array per kernel instantiation, shared by the threads of the running block (block
// scope, as blocks run one after another) and guarded by AddressSanitizer's redzones for
// globals. A barrier that some threads of a block never reach is reported as an error.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

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
using std::exp;
using std::log;

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

// The first error a launch met (empty when none); the extern "C" wrappers return it.
inline thread_local char launch_error[512] = "";

inline void set_error(const char* message) {
  if (launch_error[0] == '\0') std::snprintf(launch_error, sizeof launch_error, "%s", message);
}

struct Fiber {
  ucontext_t context;
  uint3 thread;
  enum State { kReady, kAtBarrier, kDone } state;
};

inline thread_local Fiber* current_fiber = nullptr;
inline thread_local ucontext_t scheduler_context;
inline thread_local void (*fiber_invoke)(void*) = nullptr;
inline thread_local void* fiber_body = nullptr;

// Stacks are reused from block to block (allocating them per block would dominate the run).
constexpr std::size_t kFiberStack = 256 * 1024;  // ample for register tiles, with ASan's redzones
inline thread_local std::vector<std::unique_ptr<char[]>> fiber_stacks;

inline void fiber_entry() {
  fiber_invoke(fiber_body);
  current_fiber->state = Fiber::kDone;  // returning resumes scheduler_context through uc_link
}

inline void syncthreads() {
  Fiber* fiber = current_fiber;
  if (fiber == nullptr) {
    set_error("__syncthreads() in a kernel the harness runs serially (it has no __shared__ or __syncthreads in its body?)");
    return;
  }
  fiber->state = Fiber::kAtBarrier;
  swapcontext(&fiber->context, &scheduler_context);
}

// Runs one block of a cooperative kernel; false (with launch_error set) on a barrier mismatch.
template <typename Body>
inline bool run_block_cooperative(dim3 block, Body& body) {
  const unsigned n = block.x * block.y * block.z;
  while (fiber_stacks.size() < n) fiber_stacks.emplace_back(new char[kFiberStack]);
  std::vector<Fiber> fibers(n);
  fiber_invoke = [](void* p) { (*static_cast<Body*>(p))(); };
  fiber_body = &body;
  for (unsigned i = 0; i < n; ++i) {
    Fiber& f = fibers[i];
    f.thread = {i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
    f.state = Fiber::kReady;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = fiber_stacks[i].get();
    f.context.uc_stack.ss_size = kFiberStack;
    f.context.uc_link = &scheduler_context;
    makecontext(&f.context, fiber_entry, 0);
  }
  for (unsigned phase = 0;; ++phase) {
    for (unsigned k = 0; k < n; ++k) {
      Fiber& f = fibers[phase % 2 == 0 ? k : n - 1 - k];
      if (f.state != Fiber::kReady) continue;
      threadIdx = f.thread;
      current_fiber = &f;
      swapcontext(&scheduler_context, &f.context);
      current_fiber = nullptr;
    }
    unsigned waiting = 0, done = 0;
    for (const Fiber& f : fibers) {
      waiting += f.state == Fiber::kAtBarrier;
      done += f.state == Fiber::kDone;
    }
    if (done == n) return true;
    if (waiting == n) {
      for (Fiber& f : fibers) f.state = Fiber::kReady;
      continue;
    }
    char message[256];
    std::snprintf(message, sizeof message,
                  "__syncthreads() barrier %u of block (%u, %u, %u) reached by %u of its %u threads; the other %u "
                  "returned (on a GPU this hangs or corrupts shared memory)",
                  phase, blockIdx.x, blockIdx.y, blockIdx.z, waiting, n, done);
    set_error(message);
    return false;  // the waiting fibers are abandoned; their stacks are reused by the next launch
  }
}

// Sets blockIdx to every block of a launch in CUDA's index order and calls run_block(),
// stopping early when it returns false.
template <typename RunBlock>
inline void for_each_block(dim3 grid, dim3 block, RunBlock run_block) {
  gridDim = grid;
  blockDim = block;
  for (unsigned int bz = 0; bz < grid.z; ++bz)
    for (unsigned int by = 0; by < grid.y; ++by)
      for (unsigned int bx = 0; bx < grid.x; ++bx) {
        blockIdx = {bx, by, bz};
        if (!run_block()) return;
      }
}

// A cooperative launch: each block run by run_block_cooperative.
template <typename Body>
inline void run_grid_cooperative(dim3 grid, dim3 block, Body body) {
  for_each_block(grid, block, [&]() { return run_block_cooperative(block, body); });
}

// Runs `body` once per (block, thread) of a grid x block launch, in CUDA's index order.
template <typename Body>
inline void run_grid(dim3 grid, dim3 block, Body body) {
  for_each_block(grid, block, [&]() {
    for (unsigned int tz = 0; tz < block.z; ++tz)
      for (unsigned int ty = 0; ty < block.y; ++ty)
        for (unsigned int tx = 0; tx < block.x; ++tx) {
          threadIdx = {tx, ty, tz};
          body();
        }
    return true;
  });
}

}  // namespace gl_harness

inline void __syncthreads() { gl_harness::syncthreads(); }
