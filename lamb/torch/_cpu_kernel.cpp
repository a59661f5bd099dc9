// The fused CPU step of lamb.torch.Lamb and lamb.torch.Lars: every layer of a dtype in one call.
//
// Compiled on first use by lamb/torch/_cpu_fused.py (g++ -O3 -fopenmp -ffp-contract=off) and loaded with
// ctypes; no torch headers, so it builds in about a second.
//
// Why two passes and in which order: the trust ratio needs the whole layer's norms ||x|| and ||u|| before any
// weight is written (paper, Algorithm 2). Pass 1 reads g, x, m, v, writes m, v and u (into a scratch buffer
// the caller keeps) and reduces the norms; pass 2 reads u and x and writes x: 40 bytes per float32 element,
// the floor of shared/research/implementations.md. Pass 2 walks each thread's range backwards, so that it
// starts on the data pass 1 touched last, still in the cache. Layers of 32K elements or more are split over the
// threads; smaller ones are shared out whole.
//
// Numerics: element-wise math in the parameter's precision (as torch does), no fused multiply-adds; norms
// summed in the parameter's precision within blocks of 512 elements (one partial per vector lane), the blocks
// and the threads' parts in double; trust ratio in double.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <omp.h>

namespace {

enum Norm { L1 = 0, L2 = 1, LINF = 2 };

constexpr int64_t kBlock = 512;           // elements per backwards block of pass 2
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
  bool low_w1, nesterov;
};

// torch.lerp(start, end, w): start + w (end - start) for w < 0.5, else end - (end - start)(1 - w), written
// as end + (w - 1)(end - start), which rounds identically and lets the choice vectorize as a select.
template <typename T>
inline T lerp(T start, T end, T w, bool low_w) {
  return (low_w ? start : end) + (low_w ? w : w - T(1)) * (end - start);
}

// One element: new m and v (m_t = beta1 m + (1 - beta1) g, v_t = beta2 v + (1 - beta2) g^2), and returns u.
// The scalars are passed by value so that the compiler need not reload them after every store.
template <typename T, bool NESTEROV>
inline T lamb_element(const LambScalars<T> s, T x, T g, T* m, T* v) {
  T mi = lerp(*m, g, s.w1, s.low_w1);
  T vi = *v * s.beta2 + s.one_minus_beta2 * g * g;
  *m = mi;
  *v = vi;
  T m_hat = NESTEROV ? s.a_m * mi + s.a_g * g : s.a_m * mi;
  T v_hat = NESTEROV ? s.b_v * vi + s.b_g * g * g : s.b_v * vi;
  return m_hat / (std::sqrt(v_hat) + s.eps) + s.weight_decay * x;
}

// Pass 1 of one thread's range: moments, u (kept in u_out for pass 2) and the norms' partial sums (l1, l2) or
// maxima (linf). `omp simd reduction` keeps one partial per vector lane: the only reassociation anywhere (no
// -ffast-math), so results depend on the thread count and vector width only through the norms' rounding.
template <typename T, int NORM, bool ADAPT, bool NESTEROV>
void lamb_pass1(const LambScalars<T> s, const T* __restrict__ x, const T* __restrict__ g, T* __restrict__ m,
                T* __restrict__ v, T* __restrict__ u_out, int64_t lo, int64_t hi, double* x_norm, double* u_norm) {
  double x_acc = 0.0, u_acc = 0.0;
  if (!ADAPT) {
#pragma omp simd
    for (int64_t j = lo; j < hi; ++j) u_out[j] = lamb_element<T, NESTEROV>(s, x[j], s.sign * g[j], m + j, v + j);
  } else if (NORM == LINF) {
    T x_max = 0, u_max = 0;
#pragma omp simd reduction(max : x_max, u_max)
    for (int64_t j = lo; j < hi; ++j) {
      T u = lamb_element<T, NESTEROV>(s, x[j], s.sign * g[j], m + j, v + j);
      u_out[j] = u;
      x_max = std::max(x_max, T(std::fabs(x[j])));
      u_max = std::max(u_max, T(std::fabs(u)));
    }
    x_acc = x_max;
    u_acc = u_max;
  } else {
    // Sums in the parameter's precision over blocks of kBlock elements (lane-wise), blocks added in double.
    for (int64_t start = lo; start < hi; start += kBlock) {
      const int64_t end = start + kBlock < hi ? start + kBlock : hi;
      T x_block = 0, u_block = 0;
#pragma omp simd reduction(+ : x_block, u_block)
      for (int64_t j = start; j < end; ++j) {
        T u = lamb_element<T, NESTEROV>(s, x[j], s.sign * g[j], m + j, v + j);
        u_out[j] = u;
        x_block += norm_term<T, NORM>(x[j]);
        u_block += norm_term<T, NORM>(u);
      }
      x_acc += x_block;
      u_acc += u_block;
    }
  }
  *x_norm = x_acc;
  *u_norm = u_acc;
}

// Pass 2, for LAMB and LARS: x_{t+1} = x_t - eta r u, backwards over blocks (each block forwards, so that it
// vectorizes), starting on what pass 1 left in the cache.
template <typename T>
void apply_step(T* __restrict__ x, const T* __restrict__ u, int64_t lo, int64_t hi, T step) {
  for (int64_t end = hi; end > lo;) {
    int64_t start = end - kBlock > lo ? end - kBlock : lo;
#pragma omp simd
    for (int64_t j = start; j < end; ++j) x[j] = x[j] + u[j] * step;
    end = start;
  }
}

// ---------------------------------------------------------------------------------------------------------
// LARS (Algorithm 1): d = g + lambda x; m_t = beta1 m + (1 - beta1) d; u = m_t, or (Nesterov)
// beta1 m_t + (1 - beta1) d.

template <typename T>
struct LarsScalars {
  T sign, w1, weight_decay;
  bool low_w1, nesterov;
};

template <typename T, bool NESTEROV>
inline T lars_element(const LarsScalars<T> s, T x, T g, T* m) {
  T d = s.sign * g + s.weight_decay * x;
  T mi = lerp(*m, d, s.w1, s.low_w1);
  *m = mi;
  return NESTEROV ? lerp(mi, d, s.w1, s.low_w1) : mi;
}

template <typename T, int NORM, bool ADAPT, bool NESTEROV>
void lars_pass1(const LarsScalars<T> s, const T* __restrict__ x, const T* __restrict__ g, T* __restrict__ m,
                T* __restrict__ u_out, int64_t lo, int64_t hi, double* x_norm, double* u_norm) {
  double x_acc = 0.0, u_acc = 0.0;
  if (!ADAPT) {
#pragma omp simd
    for (int64_t j = lo; j < hi; ++j) u_out[j] = lars_element<T, NESTEROV>(s, x[j], g[j], m + j);
  } else if (NORM == LINF) {
    T x_max = 0, u_max = 0;
#pragma omp simd reduction(max : x_max, u_max)
    for (int64_t j = lo; j < hi; ++j) {
      T u = lars_element<T, NESTEROV>(s, x[j], g[j], m + j);
      u_out[j] = u;
      x_max = std::max(x_max, T(std::fabs(x[j])));
      u_max = std::max(u_max, T(std::fabs(u)));
    }
    x_acc = x_max;
    u_acc = u_max;
  } else {
    // Sums in the parameter's precision over blocks of kBlock elements (lane-wise), blocks added in double.
    for (int64_t start = lo; start < hi; start += kBlock) {
      const int64_t end = start + kBlock < hi ? start + kBlock : hi;
      T x_block = 0, u_block = 0;
#pragma omp simd reduction(+ : x_block, u_block)
      for (int64_t j = start; j < end; ++j) {
        T u = lars_element<T, NESTEROV>(s, x[j], g[j], m + j);
        u_out[j] = u;
        x_block += norm_term<T, NORM>(x[j]);
        u_block += norm_term<T, NORM>(u);
      }
      x_acc += x_block;
      u_acc += u_block;
    }
  }
  *x_norm = x_acc;
  *u_norm = u_acc;
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

// Pass 1 with the norm, layer adaptation on/off and Nesterov on/off known at compile time: each its own loop.
template <template <typename, int, bool, bool> class Pass1, typename T, typename... Args>
void dispatch_pass1(int norm, bool adapt, bool nesterov, Args... args) {
  if (nesterov) {
    if (!adapt) return Pass1<T, L2, false, true>::run(args...);
    if (norm == L1) return Pass1<T, L1, true, true>::run(args...);
    if (norm == L2) return Pass1<T, L2, true, true>::run(args...);
    return Pass1<T, LINF, true, true>::run(args...);
  }
  if (!adapt) return Pass1<T, L2, false, false>::run(args...);
  if (norm == L1) return Pass1<T, L1, true, false>::run(args...);
  if (norm == L2) return Pass1<T, L2, true, false>::run(args...);
  return Pass1<T, LINF, true, false>::run(args...);
}

template <typename T, int NORM, bool ADAPT, bool NESTEROV>
struct LambPass1 {
  static void run(LambScalars<T> s, const T* x, const T* g, T* m, T* v, T* u, int64_t lo, int64_t hi, double* a,
                  double* b) {
    lamb_pass1<T, NORM, ADAPT, NESTEROV>(s, x, g, m, v, u, lo, hi, a, b);
  }
};

template <typename T, int NORM, bool ADAPT, bool NESTEROV>
struct LarsPass1 {
  static void run(LarsScalars<T> s, const T* x, const T* g, T* m, T* u, int64_t lo, int64_t hi, double* a,
                  double* b) {
    lars_pass1<T, NORM, ADAPT, NESTEROV>(s, x, g, m, u, lo, hi, a, b);
  }
};

// scratch: room for u, where layer i uses scratch + offsets[i] (the caller gives concurrent layers disjoint
// ranges: every layer of kParallelMin elements or more starts at 0, the smaller ones one after another).
template <typename T>
void lamb_group(int64_t layers, T** x, T** g, T** m, T** v, const int64_t* numel, const double* coefficients,
                const double* hyper, const int64_t* flags, T* scratch, const int64_t* offsets, T* ratios) {
  // hyper: neg_lr, beta1, beta2, eps, weight_decay, clip_lo, clip_hi;
  // flags: norm, adapt, maximize, threads, nesterov; coefficients: a_m, a_g, b_v, b_g per layer.
  const double neg_lr = hyper[0], beta1 = hyper[1], beta2 = hyper[2];
  const int norm = int(flags[0]), threads = int(flags[3]);
  const bool adapt = flags[1] != 0, nesterov = flags[4] != 0;
  auto layer = [&](int64_t i, int layer_threads) {
    const double* c = coefficients + 4 * i;
    const LambScalars<T> s{T(flags[2] ? -1 : 1), T(1.0 - beta1), T(beta2), T(1.0 - beta2), T(hyper[3]),
                           T(hyper[4]), T(c[0]), T(c[1]), T(c[2]), T(c[3]), std::fabs(1.0 - beta1) < 0.5,
                           nesterov};
    T *xi = x[i], *mi = m[i], *vi = v[i], *ui = scratch + offsets[i];
    const T* gi = g[i];
    ratios[i] = T(layer_step(
        numel[i], layer_threads, adapt, norm, hyper[5], hyper[6], neg_lr,
        [&](int64_t lo, int64_t hi, double* a, double* b) {
          dispatch_pass1<LambPass1, T>(norm, adapt, nesterov, s, xi, gi, mi, vi, ui, lo, hi, a, b);
        },
        [&](int64_t lo, int64_t hi, double step) { apply_step<T>(xi, ui, lo, hi, T(step)); }));
  };
  group_step(layers, numel, threads, layer);
}

template <typename T>
void lars_group(int64_t layers, T** x, T** g, T** m, const int64_t* numel, const double* hyper,
                const int64_t* flags, T* scratch, const int64_t* offsets, T* ratios) {
  // hyper: neg_lr, beta1, weight_decay, clip_lo, clip_hi; flags: norm, adapt, maximize, threads, nesterov
  const double neg_lr = hyper[0], beta1 = hyper[1];
  const int norm = int(flags[0]), threads = int(flags[3]);
  const bool adapt = flags[1] != 0, nesterov = flags[4] != 0;
  const LarsScalars<T> s{T(flags[2] ? -1 : 1), T(1.0 - beta1), T(hyper[2]), std::fabs(1.0 - beta1) < 0.5,
                         nesterov};
  auto layer = [&](int64_t i, int layer_threads) {
    T *xi = x[i], *mi = m[i], *ui = scratch + offsets[i];
    const T* gi = g[i];
    ratios[i] = T(layer_step(
        numel[i], layer_threads, adapt, norm, hyper[3], hyper[4], neg_lr,
        [&](int64_t lo, int64_t hi, double* a, double* b) {
          dispatch_pass1<LarsPass1, T>(norm, adapt, nesterov, s, xi, gi, mi, ui, lo, hi, a, b);
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
