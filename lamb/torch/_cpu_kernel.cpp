// The fused CPU step of lamb.torch.Lamb and lamb.torch.Lars: every layer of a group in one call.
//
// Compiled on first use by lamb/torch/_cpu_fused.py (g++ -O3 -fopenmp -ffp-contract=off) and loaded with
// ctypes; no torch headers, so it builds in about a second. Plain C++: the element-wise arithmetic is written
// once (lamb_update, lars_update) and used by both passes, so pass 2 recomputes exactly the u of pass 1.
//
// Why two passes and in which order: the trust ratio needs the whole layer's norms ||x|| and ||u|| before any
// weight is written (paper, Algorithm 2). Pass 1 updates m and v and reduces the norms; pass 2 recomputes u
// from the new m, v and the unchanged g, x and writes x (DeepSpeed's layout: no buffer for u). Pass 2 walks
// each thread's range backwards, so that it starts on the data pass 1 touched last, still in the cache: for
// every layer that fits in the last-level cache pass 2 costs little memory traffic.
//
// Numerics: element-wise math in the parameter's precision (as torch does), norms accumulated in double in
// eight lanes per thread (vectorizes without reassociating anything), trust ratio in double.
#include <cmath>
#include <cstdint>
#include <omp.h>

namespace {

enum Norm { L1 = 0, L2 = 1, LINF = 2 };

constexpr int64_t kLanes = 8;
constexpr int64_t kBlock = 512;           // elements per backwards block of pass 2
constexpr int64_t kParallelMin = 1 << 15;  // smaller layers run on one thread (parallel region costs ~us)
constexpr int kMaxThreads = 256;

// torch.lerp: start + w (end - start) for |w| < 0.5, else end - (end - start)(1 - w).
template <typename T>
inline T lerp(T start, T end, T w, bool low_weight) {
  return low_weight ? start + w * (end - start) : end - (end - start) * (T(1) - w);
}

template <int NORM>
inline double norm_term(double a) {
  if (NORM == L2) return a * a;
  return std::fabs(a);
}

template <int NORM>
inline double combine(double acc, double term) {
  if (NORM == LINF) return (term > acc || term != term) ? term : acc;  // max that keeps a NaN
  return acc + term;
}

template <int NORM>
inline double finish(double acc) { return NORM == L2 ? std::sqrt(acc) : acc; }

struct Lanes {
  double x[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  double u[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
};

template <int NORM>
inline void reduce_lanes(const Lanes& lanes, double* x_acc, double* u_acc) {
  double x = 0.0, u = 0.0;
  for (int64_t k = 0; k < kLanes; ++k) {
    x = combine<NORM>(x, lanes.x[k]);
    u = combine<NORM>(u, lanes.u[k]);
  }
  *x_acc = x;
  *u_acc = u;
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
  bool low_w1;
};

template <typename T>
inline T lamb_update(const LambScalars<T>& s, T x, T g, T m, T v) {
  T m_hat = s.a_m * m + s.a_g * g;
  T v_hat = s.b_v * v + s.b_g * g * g;
  return m_hat / (std::sqrt(v_hat) + s.eps) + s.weight_decay * x;
}

template <typename T>
inline void lamb_moments(const LambScalars<T>& s, T g, T* m, T* v) {
  *m = lerp(*m, g, s.w1, s.low_w1);                      // m_t = beta1 m_{t-1} + (1 - beta1) g_t
  *v = *v * s.beta2 + s.one_minus_beta2 * g * g;         // v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
}

template <typename T, int NORM>
void lamb_pass1(const LambScalars<T>& s, T* x, const T* g, T* m, T* v, int64_t lo, int64_t hi, bool adapt,
                double* x_acc, double* u_acc) {
  Lanes lanes;
  int64_t j = lo;
  for (; j + kLanes <= hi; j += kLanes) {
    for (int64_t k = 0; k < kLanes; ++k) {
      T gi = s.sign * g[j + k], mi = m[j + k], vi = v[j + k];
      lamb_moments(s, gi, &mi, &vi);
      m[j + k] = mi;
      v[j + k] = vi;
      if (adapt) {
        T xi = x[j + k];
        T ui = lamb_update(s, xi, gi, mi, vi);
        lanes.x[k] = combine<NORM>(lanes.x[k], norm_term<NORM>(xi));
        lanes.u[k] = combine<NORM>(lanes.u[k], norm_term<NORM>(ui));
      }
    }
  }
  for (int64_t k = 0; j < hi; ++j, ++k) {
    T gi = s.sign * g[j], mi = m[j], vi = v[j];
    lamb_moments(s, gi, &mi, &vi);
    m[j] = mi;
    v[j] = vi;
    if (adapt) {
      T xi = x[j];
      T ui = lamb_update(s, xi, gi, mi, vi);
      lanes.x[k] = combine<NORM>(lanes.x[k], norm_term<NORM>(xi));
      lanes.u[k] = combine<NORM>(lanes.u[k], norm_term<NORM>(ui));
    }
  }
  reduce_lanes<NORM>(lanes, x_acc, u_acc);
}

template <typename T>
void lamb_pass2(const LambScalars<T>& s, T* x, const T* g, const T* m, const T* v, int64_t lo, int64_t hi,
                T step) {
  // Backwards over blocks (each block forwards, so that it vectorizes): x_{t+1} = x_t - eta r u.
  for (int64_t end = hi; end > lo;) {
    int64_t start = end - kBlock > lo ? end - kBlock : lo;
    for (int64_t j = start; j < end; ++j) {
      T ui = lamb_update(s, x[j], s.sign * g[j], m[j], v[j]);
      x[j] = x[j] + ui * step;
    }
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

template <typename T>
inline T lars_update(const LarsScalars<T>& s, T d, T m) { return s.nesterov ? lerp(m, d, s.w1, s.low_w1) : m; }

template <typename T, int NORM>
void lars_pass1(const LarsScalars<T>& s, T* x, const T* g, T* m, int64_t lo, int64_t hi, bool adapt,
                double* x_acc, double* u_acc) {
  Lanes lanes;
  int64_t j = lo;
  for (; j + kLanes <= hi; j += kLanes) {
    for (int64_t k = 0; k < kLanes; ++k) {
      T xi = x[j + k];
      T d = s.sign * g[j + k] + s.weight_decay * xi;
      T mi = lerp(m[j + k], d, s.w1, s.low_w1);
      m[j + k] = mi;
      if (adapt) {
        lanes.x[k] = combine<NORM>(lanes.x[k], norm_term<NORM>(xi));
        lanes.u[k] = combine<NORM>(lanes.u[k], norm_term<NORM>(lars_update(s, d, mi)));
      }
    }
  }
  for (int64_t k = 0; j < hi; ++j, ++k) {
    T xi = x[j];
    T d = s.sign * g[j] + s.weight_decay * xi;
    T mi = lerp(m[j], d, s.w1, s.low_w1);
    m[j] = mi;
    if (adapt) {
      lanes.x[k] = combine<NORM>(lanes.x[k], norm_term<NORM>(xi));
      lanes.u[k] = combine<NORM>(lanes.u[k], norm_term<NORM>(lars_update(s, d, mi)));
    }
  }
  reduce_lanes<NORM>(lanes, x_acc, u_acc);
}

template <typename T>
void lars_pass2(const LarsScalars<T>& s, T* x, const T* g, const T* m, int64_t lo, int64_t hi, T step) {
  for (int64_t end = hi; end > lo;) {
    int64_t start = end - kBlock > lo ? end - kBlock : lo;
    for (int64_t j = start; j < end; ++j) {
      T xi = x[j];
      T d = s.sign * g[j] + s.weight_decay * xi;
      x[j] = xi + lars_update(s, d, m[j]) * step;
    }
    end = start;
  }
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

template <typename T>
void lamb_group(int64_t layers, T** x, T** g, T** m, T** v, const int64_t* numel, const double* coefficients,
                const double* hyper, const int64_t* flags, T* ratios) {
  // hyper: neg_lr, beta1, beta2, eps, weight_decay, clip_lo, clip_hi; flags: norm, adapt, maximize, threads
  // coefficients: a_m, a_g, b_v, b_g per layer.
  const double neg_lr = hyper[0], beta1 = hyper[1], beta2 = hyper[2];
  const int norm = int(flags[0]), threads = int(flags[3]);
  const bool adapt = flags[1] != 0;
  auto layer = [&](int64_t i, int layer_threads) {
    const double* c = coefficients + 4 * i;
    LambScalars<T> s{T(flags[2] ? -1 : 1), T(1.0 - beta1), T(beta2), T(1.0 - beta2), T(hyper[3]), T(hyper[4]),
                     T(c[0]), T(c[1]), T(c[2]), T(c[3]), std::fabs(1.0 - beta1) < 0.5};
    T *xi = x[i], *mi = m[i], *vi = v[i];
    const T* gi = g[i];
    auto pass2 = [&](int64_t lo, int64_t hi, double step) { lamb_pass2<T>(s, xi, gi, mi, vi, lo, hi, T(step)); };
    double r;
    if (norm == L1)
      r = layer_step(numel[i], layer_threads, adapt, norm, hyper[5], hyper[6], neg_lr,
                     [&](int64_t lo, int64_t hi, double* a, double* b) {
                       lamb_pass1<T, L1>(s, xi, gi, mi, vi, lo, hi, adapt, a, b);
                     }, pass2);
    else if (norm == L2)
      r = layer_step(numel[i], layer_threads, adapt, norm, hyper[5], hyper[6], neg_lr,
                     [&](int64_t lo, int64_t hi, double* a, double* b) {
                       lamb_pass1<T, L2>(s, xi, gi, mi, vi, lo, hi, adapt, a, b);
                     }, pass2);
    else
      r = layer_step(numel[i], layer_threads, adapt, norm, hyper[5], hyper[6], neg_lr,
                     [&](int64_t lo, int64_t hi, double* a, double* b) {
                       lamb_pass1<T, LINF>(s, xi, gi, mi, vi, lo, hi, adapt, a, b);
                     }, pass2);
    ratios[i] = T(r);
  };
  group_step(layers, numel, threads, layer);
}

template <typename T>
void lars_group(int64_t layers, T** x, T** g, T** m, const int64_t* numel, const double* hyper,
                const int64_t* flags, T* ratios) {
  // hyper: neg_lr, beta1, weight_decay, clip_lo, clip_hi; flags: norm, adapt, maximize, threads, nesterov
  const double neg_lr = hyper[0], beta1 = hyper[1];
  const int norm = int(flags[0]), threads = int(flags[3]);
  const bool adapt = flags[1] != 0;
  LarsScalars<T> s{T(flags[2] ? -1 : 1), T(1.0 - beta1), T(hyper[2]), std::fabs(1.0 - beta1) < 0.5,
                   flags[4] != 0};
  auto layer = [&](int64_t i, int layer_threads) {
    T *xi = x[i], *mi = m[i];
    const T* gi = g[i];
    auto pass2 = [&](int64_t lo, int64_t hi, double step) { lars_pass2<T>(s, xi, gi, mi, lo, hi, T(step)); };
    double r;
    if (norm == L1)
      r = layer_step(numel[i], layer_threads, adapt, norm, hyper[3], hyper[4], neg_lr,
                     [&](int64_t lo, int64_t hi, double* a, double* b) {
                       lars_pass1<T, L1>(s, xi, gi, mi, lo, hi, adapt, a, b);
                     }, pass2);
    else if (norm == L2)
      r = layer_step(numel[i], layer_threads, adapt, norm, hyper[3], hyper[4], neg_lr,
                     [&](int64_t lo, int64_t hi, double* a, double* b) {
                       lars_pass1<T, L2>(s, xi, gi, mi, lo, hi, adapt, a, b);
                     }, pass2);
    else
      r = layer_step(numel[i], layer_threads, adapt, norm, hyper[3], hyper[4], neg_lr,
                     [&](int64_t lo, int64_t hi, double* a, double* b) {
                       lars_pass1<T, LINF>(s, xi, gi, mi, lo, hi, adapt, a, b);
                     }, pass2);
    ratios[i] = T(r);
  };
  group_step(layers, numel, threads, layer);
}

}  // namespace

extern "C" {

int lamb_kernel_version() { return 1; }

void lamb_step_f32(int64_t layers, float** x, float** g, float** m, float** v, const int64_t* numel,
                   const double* coefficients, const double* hyper, const int64_t* flags, float* ratios) {
  lamb_group<float>(layers, x, g, m, v, numel, coefficients, hyper, flags, ratios);
}

void lamb_step_f64(int64_t layers, double** x, double** g, double** m, double** v, const int64_t* numel,
                   const double* coefficients, const double* hyper, const int64_t* flags, double* ratios) {
  lamb_group<double>(layers, x, g, m, v, numel, coefficients, hyper, flags, ratios);
}

void lars_step_f32(int64_t layers, float** x, float** g, float** m, const int64_t* numel, const double* hyper,
                   const int64_t* flags, float* ratios) {
  lars_group<float>(layers, x, g, m, numel, hyper, flags, ratios);
}

void lars_step_f64(int64_t layers, double** x, double** g, double** m, const int64_t* numel, const double* hyper,
                   const int64_t* flags, double* ratios) {
  lars_group<double>(layers, x, g, m, numel, hyper, flags, ratios);
}

}  // extern "C"
