// The fused CPU step of lamb.torch.Lamb and lamb.torch.Lars: every layer of a dtype in one call.
//
// Compiled on first use by lamb/torch/_cpu_fused.py (g++ -O3 -fopenmp -ffp-contract=off) and loaded with
// ctypes; no torch headers, so it builds in about a second.
//
// Why two passes and in which order: the trust ratio needs the whole layer's norms ||x|| and ||u|| before any
// weight is written (paper, Algorithm 2). Pass 1 reads g, x, m, v, writes m, v and u (into a scratch buffer
// the caller keeps; with streaming stores for layers too big for the cache) and reduces the norms; pass 2
// reads u and x and writes x: 40 bytes per float32 element (28 in pass 1, 12 in pass 2), the least a step
// that must finish the norms before writing any weight can move.
// Layers of 32K elements or more are split over the threads; smaller ones are shared out whole.
//
// Numerics: element-wise math in the parameter's precision (as torch does), no fused multiply-adds; norms
// summed in the parameter's precision within blocks of 512 elements (one partial per vector lane), the blocks
// and the threads' parts in double; trust ratio in double.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <omp.h>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace {

enum Norm { L1 = 0, L2 = 1, LINF = 2 };

constexpr int64_t kBlock = 512;           // elements per block of pass 1 (norms summed in T within one)
constexpr int64_t kParallelMin = 1 << 15;  // smaller layers run on one thread (parallel region costs ~us)
constexpr int kMaxThreads = 256;

template <typename T, int NORM>
inline T norm_term(T a) {
  if (NORM == L2) return a * a;
  return std::fabs(a);
}

// phi(||x||) / ||u||, and 1 where ||x|| = 0 or ||u|| = 0 (the zero-norm rule of lamb.reference.trust_ratio).
inline double trust_ratio(double weight_norm, double update_norm, double clip_lo, double clip_hi) {
  if (!(weight_norm > 0.0) || !(update_norm > 0.0)) return 1.0;  // also for NaN norms, as the other paths
  double phi = weight_norm < clip_lo ? clip_lo : (weight_norm > clip_hi ? clip_hi : weight_norm);
  return phi / update_norm;
}


// ---------------------------------------------------------------------------------------------------------
// LAMB: u = m_hat / (sqrt(v_hat) + eps) + lambda x, with m_hat = a_m m + a_g g and v_hat = b_v v + b_g g^2
// (plain LAMB: a_g = b_g = 0, a_m = 1/(1 - beta1^t), b_v = 1/(1 - beta2^t)).

template <typename T>
struct LambScalars {
  T sign, w1, beta2, one_minus_beta2, eps, weight_decay, a_m, a_g, b_v, b_g;
};

// torch.lerp(start, end, w): start + w (end - start) for w < 0.5, else end - (end - start)(1 - w), written
// as end + (w - 1)(end - start), which rounds identically. LOW_W (w < 0.5) is a compile-time choice: as a
// run-time select inside the loop (the same for every element), GCC 12 kept N-LAMB's pass 1 scalar (no
// vectorization of the loop actually run), which made fused N-LAMB/NN-LAMB 3-4.5x slower than fused LAMB.
template <typename T, bool LOW_W>
inline T lerp(T start, T end, T w) {
  return LOW_W ? start + w * (end - start) : end + (w - T(1)) * (end - start);
}

// One element: new m and v (m_t = beta1 m + (1 - beta1) g, v_t = beta2 v + (1 - beta2) g^2), and returns u.
// The scalars are passed by value so that the compiler need not reload them after every store.
template <typename T, bool NESTEROV, bool LOW_W>
inline T lamb_element(const LambScalars<T> s, T x, T g, T* m, T* v) {
  T mi = lerp<T, LOW_W>(*m, g, s.w1);
  T vi = *v * s.beta2 + s.one_minus_beta2 * g * g;
  *m = mi;
  *v = vi;
  T m_hat = NESTEROV ? s.a_m * mi + s.a_g * g : s.a_m * mi;
  T v_hat = NESTEROV ? s.b_v * vi + s.b_g * g * g : s.b_v * vi;
  return m_hat / (std::sqrt(v_hat) + s.eps) + s.weight_decay * x;
}

// Copies n elements of a block computed in the L1 cache to dst with streaming stores (plain stores for the
// unaligned head and the tail, and where the machine has no SSE2).
template <typename T>
inline void stream_block(T* __restrict__ dst, const T* __restrict__ src, int64_t n) {
  int64_t j = 0;
#if defined(__AVX__) || defined(__SSE2__)
#if defined(__AVX__)
  constexpr int64_t kBytes = 32;
#else
  constexpr int64_t kBytes = 16;
#endif
  constexpr int64_t kLanes = kBytes / int64_t(sizeof(T));
  for (; j < n && (reinterpret_cast<std::uintptr_t>(dst + j) % kBytes) != 0; ++j) dst[j] = src[j];
  for (; j + kLanes <= n; j += kLanes) {
    if constexpr (sizeof(T) == 4) {
#if defined(__AVX__)
      _mm256_stream_ps(reinterpret_cast<float*>(dst + j), _mm256_loadu_ps(reinterpret_cast<const float*>(src + j)));
#else
      _mm_stream_ps(reinterpret_cast<float*>(dst + j), _mm_loadu_ps(reinterpret_cast<const float*>(src + j)));
#endif
    } else {
#if defined(__AVX__)
      _mm256_stream_pd(reinterpret_cast<double*>(dst + j), _mm256_loadu_pd(reinterpret_cast<const double*>(src + j)));
#else
      _mm_stream_pd(reinterpret_cast<double*>(dst + j), _mm_loadu_pd(reinterpret_cast<const double*>(src + j)));
#endif
    }
  }
#endif
  for (; j < n; ++j) dst[j] = src[j];
}

// Pass 1 of one thread's range, for LAMB and LARS: `element(j)` updates the moments of element j and returns its
// u, which is kept in u_out for pass 2, while the norms' partial sums (l1, l2) or maxima (linf) are reduced.
// `omp simd reduction` keeps one partial per vector lane: the only reassociation anywhere (no -ffast-math), so
// results depend on the thread count and vector width only through the norms' rounding. Blocks of kBlock
// elements: sums in the parameter's precision within a block, blocks added in double; with `stream`, each
// block's u is computed into a buffer in the L1 cache and then streamed out.
template <typename T, int NORM, bool ADAPT, typename Element>
void pass1(Element element, const T* __restrict__ x, T* __restrict__ u_out, int64_t lo, int64_t hi, bool stream,
           double* x_norm, double* u_norm) {
  alignas(64) T buffer[kBlock];
  double x_acc = 0.0, u_acc = 0.0;
  T x_max = 0, u_max = 0;
  for (int64_t start = lo; start < hi; start += kBlock) {
    const int64_t end = start + kBlock < hi ? start + kBlock : hi;
    T* __restrict__ u = stream ? buffer : u_out + start;  // u of element j at u[j - start]
    if (!ADAPT) {
#pragma omp simd
      for (int64_t j = start; j < end; ++j) u[j - start] = element(j);
    } else if (NORM == LINF) {
      T x_block = 0, u_block = 0;
#pragma omp simd reduction(max : x_block, u_block)
      for (int64_t j = start; j < end; ++j) {
        T uj = element(j);
        u[j - start] = uj;
        x_block = std::max(x_block, T(std::fabs(x[j])));
        u_block = std::max(u_block, T(std::fabs(uj)));
      }
      x_max = std::max(x_max, x_block);
      u_max = std::max(u_max, u_block);
    } else {
      T x_block = 0, u_block = 0;
#pragma omp simd reduction(+ : x_block, u_block)
      for (int64_t j = start; j < end; ++j) {
        T uj = element(j);
        u[j - start] = uj;
        x_block += norm_term<T, NORM>(x[j]);
        u_block += norm_term<T, NORM>(uj);
      }
      x_acc += x_block;
      u_acc += u_block;
    }
    if (stream) stream_block(u_out + start, buffer, end - start);
  }
#if defined(__SSE2__)
  if (stream) _mm_sfence();  // the streamed u is visible before pass 2 reads it
#endif
  *x_norm = NORM == LINF ? double(x_max) : x_acc;
  *u_norm = NORM == LINF ? double(u_max) : u_acc;
}

template <typename T, int NORM, bool ADAPT, bool NESTEROV, bool LOW_W>
void lamb_pass1(const LambScalars<T> s, const T* __restrict__ x, const T* __restrict__ g, T* __restrict__ m,
                T* __restrict__ v, T* __restrict__ u_out, int64_t lo, int64_t hi, bool stream, double* x_norm,
                double* u_norm) {
  pass1<T, NORM, ADAPT>([=](int64_t j) { return lamb_element<T, NESTEROV, LOW_W>(s, x[j], s.sign * g[j], m + j, v + j); },
                        x, u_out, lo, hi, stream, x_norm, u_norm);
}

// Pass 2, for LAMB and LARS: x_{t+1} = x_t - eta r u. Forwards: walking each range backwards (to start on
// what pass 1 left in the cache) was measured slower, by up to a quarter of the whole step on BERT-base shapes,
// as the hardware prefetchers follow ascending streams best.
template <typename T>
void apply_step(T* __restrict__ x, const T* __restrict__ u, int64_t lo, int64_t hi, T step) {
#pragma omp simd
  for (int64_t j = lo; j < hi; ++j) x[j] = x[j] + u[j] * step;
}

// ---------------------------------------------------------------------------------------------------------
// LARS (Algorithm 1): d = g + lambda x; m_t = beta1 m + (1 - beta1) d; u = m_t, or (Nesterov)
// beta1 m_t + (1 - beta1) d.

template <typename T>
struct LarsScalars {
  T sign, w1, weight_decay;
};

template <typename T, bool NESTEROV, bool LOW_W>
inline T lars_element(const LarsScalars<T> s, T x, T g, T* m) {
  T d = s.sign * g + s.weight_decay * x;
  T mi = lerp<T, LOW_W>(*m, d, s.w1);
  *m = mi;
  return NESTEROV ? lerp<T, LOW_W>(mi, d, s.w1) : mi;
}

template <typename T, int NORM, bool ADAPT, bool NESTEROV, bool LOW_W>
void lars_pass1(const LarsScalars<T> s, const T* __restrict__ x, const T* __restrict__ g, T* __restrict__ m,
                T* __restrict__ u_out, int64_t lo, int64_t hi, bool stream, double* x_norm, double* u_norm) {
  pass1<T, NORM, ADAPT>([=](int64_t j) { return lars_element<T, NESTEROV, LOW_W>(s, x[j], g[j], m + j); }, x, u_out, lo,
                        hi, stream, x_norm, u_norm);
}

// ---------------------------------------------------------------------------------------------------------
// One layer, on `threads` threads: the same static split of [0, n) in both passes, norms combined in thread
// order (deterministic for a given thread count).

template <typename Pass1, typename Pass2>
double layer_step(int64_t n, int threads, bool adapt, int norm, double clip_lo, double clip_hi, double neg_lr,
                  Pass1 pass1, Pass2 pass2) {
  if (threads < 1) threads = 1;
  if (threads > kMaxThreads) threads = kMaxThreads;
  if (n < kParallelMin) threads = 1;
  double x_part[kMaxThreads], u_part[kMaxThreads];
  double ratio = 1.0;
  auto split = [n](int tid, int count, int64_t* lo, int64_t* hi) {
    int64_t chunk = (n + count - 1) / count;
    chunk = (chunk + 63) / 64 * 64;  // whole cache lines per thread
    *lo = tid * chunk < n ? tid * chunk : n;
    *hi = *lo + chunk < n ? *lo + chunk : n;
  };
  auto combine_parts = [&](int count) {
    double x = 0.0, u = 0.0;
    for (int i = 0; i < count; ++i) {
      if (norm == LINF) {
        x = (x_part[i] > x || x_part[i] != x_part[i]) ? x_part[i] : x;
        u = (u_part[i] > u || u_part[i] != u_part[i]) ? u_part[i] : u;
      } else {
        x += x_part[i];
        u += u_part[i];
      }
    }
    if (norm == L2) {
      x = std::sqrt(x);
      u = std::sqrt(u);
    }
    return adapt ? trust_ratio(x, u, clip_lo, clip_hi) : 1.0;
  };
  if (threads == 1) {
    pass1(int64_t(0), n, &x_part[0], &u_part[0]);
    ratio = combine_parts(1);
    pass2(int64_t(0), n, ratio * neg_lr);
    return ratio;
  }
#pragma omp parallel num_threads(threads)
  {
    int tid = omp_get_thread_num(), count = omp_get_num_threads();
    int64_t lo, hi;
    split(tid, count, &lo, &hi);
    pass1(lo, hi, &x_part[tid], &u_part[tid]);
#pragma omp barrier
    double r = combine_parts(count);  // every thread computes the same value from the same parts
    if (tid == 0) ratio = r;
    pass2(lo, hi, r * neg_lr);
  }
  return ratio;
}

// The step of one group: big layers split over the threads one after another, then the small layers shared
// out between the threads whole.
template <typename LayerFn>
void group_step(int64_t layers, const int64_t* numel, int threads, LayerFn layer) {
  for (int64_t i = 0; i < layers; ++i)
    if (numel[i] >= kParallelMin) layer(i, threads);
  if (threads <= 1) {
    for (int64_t i = 0; i < layers; ++i)
      if (numel[i] < kParallelMin) layer(i, 1);
    return;
  }
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads)
  for (int64_t i = 0; i < layers; ++i)
    if (numel[i] < kParallelMin) layer(i, 1);
}

// Pass 1 with the norm, layer adaptation on/off, Nesterov on/off and the lerp's branch (w < 0.5) known at
// compile time: each its own loop, with no run-time choice left inside it.
template <template <typename, int, bool, bool, bool> class Pass1, typename T, bool NESTEROV, bool LOW_W,
          typename... Args>
void dispatch_norm(int norm, bool adapt, Args... args) {
  if (!adapt) return Pass1<T, L2, false, NESTEROV, LOW_W>::run(args...);
  if (norm == L1) return Pass1<T, L1, true, NESTEROV, LOW_W>::run(args...);
  if (norm == L2) return Pass1<T, L2, true, NESTEROV, LOW_W>::run(args...);
  return Pass1<T, LINF, true, NESTEROV, LOW_W>::run(args...);
}

template <template <typename, int, bool, bool, bool> class Pass1, typename T, typename... Args>
void dispatch_pass1(int norm, bool adapt, bool nesterov, bool low_w, Args... args) {
  if (nesterov) {
    if (low_w) return dispatch_norm<Pass1, T, true, true>(norm, adapt, args...);
    return dispatch_norm<Pass1, T, true, false>(norm, adapt, args...);
  }
  if (low_w) return dispatch_norm<Pass1, T, false, true>(norm, adapt, args...);
  return dispatch_norm<Pass1, T, false, false>(norm, adapt, args...);
}

template <typename T, int NORM, bool ADAPT, bool NESTEROV, bool LOW_W>
struct LambPass1 {
  static void run(LambScalars<T> s, const T* x, const T* g, T* m, T* v, T* u, int64_t lo, int64_t hi, bool stream,
                  double* a, double* b) {
    lamb_pass1<T, NORM, ADAPT, NESTEROV, LOW_W>(s, x, g, m, v, u, lo, hi, stream, a, b);
  }
};

template <typename T, int NORM, bool ADAPT, bool NESTEROV, bool LOW_W>
struct LarsPass1 {
  static void run(LarsScalars<T> s, const T* x, const T* g, T* m, T* u, int64_t lo, int64_t hi, bool stream,
                  double* a, double* b) {
    lars_pass1<T, NORM, ADAPT, NESTEROV, LOW_W>(s, x, g, m, u, lo, hi, stream, a, b);
  }
};

// scratch: room for u, where layer i uses scratch + offsets[i] (the caller gives concurrent layers disjoint
// ranges: every layer of kParallelMin elements or more starts at 0, the smaller ones one after another).
template <typename T>
void lamb_group(int64_t layers, T** x, T** g, T** m, T** v, const int64_t* numel, const double* coefficients,
                const double* hyper, const int64_t* flags, T* scratch, const int64_t* offsets, T* ratios) {
  // hyper: neg_lr, beta1, beta2, eps, weight_decay, clip_lo, clip_hi;
  // flags: norm, adapt, maximize, threads, nesterov, stream_min_bytes; coefficients: a_m, a_g, b_v, b_g per
  // layer.
  const double neg_lr = hyper[0], beta1 = hyper[1], beta2 = hyper[2];
  const int norm = int(flags[0]), threads = int(flags[3]);
  const bool adapt = flags[1] != 0, nesterov = flags[4] != 0, low_w = std::fabs(1.0 - beta1) < 0.5;
  auto layer = [&](int64_t i, int layer_threads) {
    const double* c = coefficients + 4 * i;
    const LambScalars<T> s{T(flags[2] ? -1 : 1), T(1.0 - beta1), T(beta2), T(1.0 - beta2), T(hyper[3]),
                           T(hyper[4]), T(c[0]), T(c[1]), T(c[2]), T(c[3])};
    T *xi = x[i], *mi = m[i], *vi = v[i], *ui = scratch + offsets[i];
    const T* gi = g[i];
    const bool stream = numel[i] * int64_t(sizeof(T)) >= flags[5];  // u with streaming stores
    ratios[i] = T(layer_step(
        numel[i], layer_threads, adapt, norm, hyper[5], hyper[6], neg_lr,
        [&](int64_t lo, int64_t hi, double* a, double* b) {
          dispatch_pass1<LambPass1, T>(norm, adapt, nesterov, low_w, s, xi, gi, mi, vi, ui, lo, hi, stream, a, b);
        },
        [&](int64_t lo, int64_t hi, double step) { apply_step<T>(xi, ui, lo, hi, T(step)); }));
  };
  group_step(layers, numel, threads, layer);
}

template <typename T>
void lars_group(int64_t layers, T** x, T** g, T** m, const int64_t* numel, const double* hyper,
                const int64_t* flags, T* scratch, const int64_t* offsets, T* ratios) {
  // hyper: neg_lr, beta1, weight_decay, clip_lo, clip_hi; flags: norm, adapt, maximize, threads, nesterov,
  // stream_min_bytes
  const double neg_lr = hyper[0], beta1 = hyper[1];
  const int norm = int(flags[0]), threads = int(flags[3]);
  const bool adapt = flags[1] != 0, nesterov = flags[4] != 0, low_w = std::fabs(1.0 - beta1) < 0.5;
  const LarsScalars<T> s{T(flags[2] ? -1 : 1), T(1.0 - beta1), T(hyper[2])};
  auto layer = [&](int64_t i, int layer_threads) {
    T *xi = x[i], *mi = m[i], *ui = scratch + offsets[i];
    const T* gi = g[i];
    const bool stream = numel[i] * int64_t(sizeof(T)) >= flags[5];  // u with streaming stores
    ratios[i] = T(layer_step(
        numel[i], layer_threads, adapt, norm, hyper[3], hyper[4], neg_lr,
        [&](int64_t lo, int64_t hi, double* a, double* b) {
          dispatch_pass1<LarsPass1, T>(norm, adapt, nesterov, low_w, s, xi, gi, mi, ui, lo, hi, stream, a, b);
        },
        [&](int64_t lo, int64_t hi, double step) { apply_step<T>(xi, ui, lo, hi, T(step)); }));
  };
  group_step(layers, numel, threads, layer);
}

}  // namespace

extern "C" {

int64_t lamb_kernel_parallel_min() { return kParallelMin; }

void lamb_step_f32(int64_t layers, float** x, float** g, float** m, float** v, const int64_t* numel,
                   const double* coefficients, const double* hyper, const int64_t* flags, float* scratch,
                   const int64_t* offsets, float* ratios) {
  lamb_group<float>(layers, x, g, m, v, numel, coefficients, hyper, flags, scratch, offsets, ratios);
}

void lamb_step_f64(int64_t layers, double** x, double** g, double** m, double** v, const int64_t* numel,
                   const double* coefficients, const double* hyper, const int64_t* flags, double* scratch,
                   const int64_t* offsets, double* ratios) {
  lamb_group<double>(layers, x, g, m, v, numel, coefficients, hyper, flags, scratch, offsets, ratios);
}

void lars_step_f32(int64_t layers, float** x, float** g, float** m, const int64_t* numel, const double* hyper,
                   const int64_t* flags, float* scratch, const int64_t* offsets, float* ratios) {
  lars_group<float>(layers, x, g, m, numel, hyper, flags, scratch, offsets, ratios);
}

void lars_step_f64(int64_t layers, double** x, double** g, double** m, const int64_t* numel, const double* hyper,
                   const int64_t* flags, double* scratch, const int64_t* offsets, double* ratios) {
  lars_group<double>(layers, x, g, m, numel, hyper, flags, scratch, offsets, ratios);
}

}  // extern "C"
