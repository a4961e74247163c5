// A one-layer, one-direction LSTM in bf16 on CPUs with AMX: the recurrences of its forward and backward
// passes (textvae/models/lstm.py). PyTorch's gate order i, f, g, o; per step t, with
// a_t = W_ih x_t + W_hh h_{t-1} + b:
//     i, f, o = sigmoid(a_i, a_f, a_o),  g = tanh(a_g),  c_t = f c_{t-1} + i g,  h_t = o tanh(c_t)
// and backward, with dh = dout_t + dh_next:
//     dc = dc_next + dh o (1 - tanh^2 c_t),
//     da_i = dc g i (1 - i),  da_f = dc c_{t-1} f (1 - f),  da_g = dc i (1 - g^2),  da_o = dh tanh(c_t) o (1 - o),
//     dh_next = da_t W_hh,    dc_next = dc f.
//
// Why: at PTB's sizes (batch 32, H = 256) each step's recurrent GEMM is small ([32, 256] x [256, 1024]),
// and oneDNN's LSTM spends most of its time around it, its backward ~4x its forward. Here the P threads
// of torch's pool stay in one parallel region for all the steps, with one barrier per step. Thread j
// owns a block of hidden units and the four gate columns of those units, so its GEMM slice and its
// elementwise work need no other thread's gates; only h_t (forward) and da_t (backward) are shared,
// through the barrier. A step's GEMMs are oneDNN's AMX micro-kernel (at::native::cpublas::brgemm: bf16
// operands, fp32 sums) on weight slices packed once per call, which stay in the thread's L2 across steps.
// The weight and input gradients are GEMMs over all steps afterwards (the caller's).
//
// Precision: the gates are summed in fp32 from bf16 x_t and h_{t-1} (as oneDNN's bf16 LSTM), the cell
// state and the gates' values stay fp32, h_t is stored in bf16 (the output, and the next step's GEMM
// operand), and da_t is rounded to bf16 once (the operand of the backward's GEMMs; db is summed in fp32).
// A NaN stays a NaN through the rounding, so a diverging run still reaches the loop's non-finite check.
#include <torch/extension.h>
#include <ATen/native/CPUBlas.h>
#include <omp.h>

#include "bf16.h"
#include "exp.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <vector>

namespace {

namespace cpublas = at::native::cpublas;
using textvae::exp_nonpositive;
using textvae::from_bf16;
using textvae::to_bf16_keep_nan;

// oneDNN's packed (VNNI) right operand is at most 64 columns wide (16, 32, 48 or 64): the GEMMs run per
// block of at most 64 columns
constexpr int64_t COLS = 64;
// hidden units are split over the threads in multiples of 16, so that each thread's blocks are whole
constexpr int64_t UNITS = 16;

const uint16_t* bits(const torch::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); }
uint16_t* bits_mut(torch::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); }
const at::BFloat16* bf(const uint16_t* p) { return reinterpret_cast<const at::BFloat16*>(p); }

// the first hidden unit of thread j of P
int64_t block_begin(int64_t H, int64_t P, int64_t j) { return UNITS * ((H / UNITS) * j / P); }

// b [K, N] (bf16, row-major, row stride ld; N a multiple of 16) packed for brgemm: one [K, w] VNNI block per
// w = 64 columns (the last one narrower), the block of column c at c * K. A tensor, for its 64-byte
// alignment: AMX tile loads from an operand that is not 64-byte aligned took twice as long.
torch::Tensor pack_columns(const at::BFloat16* b, int64_t K, int64_t N, int64_t ld) {
  auto out = torch::empty({K * N}, torch::kBFloat16);
  for (int64_t c = 0; c < N; c += COLS) {
    const int64_t w = std::min(COLS, N - c);
    cpublas::pack(K, w, ld, w, at::kBFloat16, at::kBFloat16, b + c, out.data_ptr<at::BFloat16>() + c * K);
  }
  return out;
}

// The forward's right operand for the units [u0, u0 + n): the transposes of W's rows q H + u0 .. + n for
// q = i, f, g, o side by side, [K, 4n], packed. W [4H, K] row-major.
torch::Tensor pack_gate_rows(const uint16_t* w, int64_t K, int64_t H, int64_t u0, int64_t n) {
  auto wt_t = torch::empty({K, 4 * n}, torch::kBFloat16);
  uint16_t* wt = bits_mut(wt_t);
  // in 16 x 16 tiles (n is a multiple of 16): an element at a time along a column took ~5x longer
  for (int64_t q = 0; q < 4; ++q) {
    for (int64_t u = 0; u < n; u += 16) {
      for (int64_t k0 = 0; k0 < K; k0 += 16) {
        const int64_t k1 = std::min(K, k0 + 16);
        for (int64_t uu = u; uu < u + 16; ++uu) {
          const uint16_t* row = w + (q * H + u0 + uu) * K;
          for (int64_t k = k0; k < k1; ++k) wt[k * 4 * n + q * n + uu] = row[k];
        }
      }
    }
  }
  return pack_columns(bf(wt), K, 4 * n, 4 * n);
}

// C [M, N] (fp32, row stride ldc) = A [M, K] (bf16, row stride lda) x the packed operand (+ C if add),
// block by block
void gemm(int64_t M, int64_t N, int64_t K, const at::BFloat16* A, int64_t lda, const torch::Tensor& packed, float* C,
          int64_t ldc, bool add = false) {
  const at::BFloat16* b = packed.data_ptr<at::BFloat16>();
  for (int64_t c = 0; c < N; c += COLS) {
    const int64_t w = std::min(COLS, N - c);
    cpublas::brgemm(M, w, K, lda, w, ldc, add, A, b + c * K, C + c);
  }
}

// One unit's gates from its four pre-activations, and its cell: i, f, o = sigmoid, g = tanh,
// c = f c_prev + i g, th = tanh(c). The five divisions of three sigmoids and two tanh are two:
// 1 / d_k = (prod_{l != k} d_l) / prod_l d_l, each d in [1, 2] (so the product cannot overflow).
struct Cell {
  float i, f, g, o, c, th;
};

inline Cell cell(float xi, float xf, float xg, float xo, float c_prev) {
  const float ei = exp_nonpositive(-std::fabs(xi)), ef = exp_nonpositive(-std::fabs(xf));
  const float eg = exp_nonpositive(-2.0f * std::fabs(xg)), eo = exp_nonpositive(-std::fabs(xo));
  const float di = 1.0f + ei, df = 1.0f + ef, dg = 1.0f + eg, dO = 1.0f + eo;
  const float p_if = di * df, p_go = dg * dO, r = 1.0f / (p_if * p_go);
  const float ri = r * df * p_go, rf = r * di * p_go, rg = r * dO * p_if, ro = r * dg * p_if;
  Cell k;
  k.i = xi >= 0.0f ? ri : ei * ri;
  k.f = xf >= 0.0f ? rf : ef * rf;
  const float tg = (1.0f - eg) * rg;
  k.g = xg >= 0.0f ? tg : -tg;
  k.o = xo >= 0.0f ? ro : eo * ro;
  k.c = k.f * c_prev + k.i * k.g;
  k.th = textvae::tanh_(k.c);
  return k;
}

// One row's gates for n units (written to a [4n]: i, f, g, o side by side) from their pre-activations
// (the GEMMs' sums s [4n] plus the biases b [4n], in the same order), and the cell and output.
inline void gate_row(const float* s, const float* b, float* a, const float* c_prev, float* c_next, float* tct,
                     uint16_t* h_next, int64_t n) {
#pragma omp simd
  for (int64_t u = 0; u < n; ++u) {
    const Cell k = cell(s[u] + b[u], s[n + u] + b[n + u], s[2 * n + u] + b[2 * n + u], s[3 * n + u] + b[3 * n + u],
                        c_prev[u]);
    a[u] = k.i;
    a[n + u] = k.f;
    a[2 * n + u] = k.g;
    a[3 * n + u] = k.o;
    c_next[u] = k.c;
    tct[u] = k.th;
    h_next[u] = to_bf16_keep_nan(k.o * k.th);
  }
}

// gate_row without gradients: the pre-activations are s + e + z (GEMM sums, the shared and the row's inputs'
// parts, all [4H] in PyTorch's gate order), the cell state c [H] is updated in place, nothing else is kept
inline void score_row(const float* s, const float* e, const float* z, float* c, uint16_t* h_next, int64_t H) {
#pragma omp simd
  for (int64_t u = 0; u < H; ++u) {
    const Cell k = cell(s[u] + e[u] + z[u], s[H + u] + e[H + u] + z[H + u], s[2 * H + u] + e[2 * H + u] + z[2 * H + u],
                        s[3 * H + u] + e[3 * H + u] + z[3 * H + u], c[u]);
    c[u] = k.c;
    h_next[u] = to_bf16_keep_nan(k.o * k.th);
  }
}

struct Arg {
  const torch::Tensor& t;
  const char* name;
  at::ScalarType dtype;
};

// each argument a contiguous CPU tensor of its dtype
void check(std::initializer_list<Arg> args) {
  for (const Arg& a : args) {
    TORCH_CHECK(a.t.device().is_cpu() && a.t.scalar_type() == a.dtype && a.t.is_contiguous(), a.name,
                ": a contiguous CPU ", c10::toString(a.dtype), " tensor");
  }
}

}  // namespace

// Whether this CPU runs the kernel: oneDNN's bf16 micro-kernel with packed (VNNI) operands needs AMX.
bool available() { return cpublas::could_pack(at::kBFloat16); }

// Whether H hidden units split over P threads in blocks of whole multiples of 16, at least one each.
bool splits(int64_t H, int64_t P) { return H % UNITS == 0 && P >= 1 && P * UNITS <= H; }

// Whether the kernel takes input size I and hidden size H with P threads: I even (VNNI pairs), and H splits.
bool supports(int64_t I, int64_t H, int64_t P) { return I % 2 == 0 && splits(H, P); }

// The forward pass. x [T, B, I] bf16 (time-major); h0 [B, H] bf16; c0 [B, H] fp32; w_ih [4H, I], w_hh [4H, H] bf16;
// bias [4H] fp32 (b_ih + b_hh); P threads. Returns hbuf [T + 1, B, H] bf16 (hbuf[0] = h0, hbuf[1:] the
// output), cbuf [T + 1, B, H] fp32 (cbuf[0] = c0), and for the backward (with the same P) the gates
// [T, B, 4H] fp32 (i, f, g, o after their nonlinearities, in thread blocks) and tc = tanh(c_t) [T, B, H] fp32.
std::vector<torch::Tensor> forward_pass(const torch::Tensor& x, const torch::Tensor& h0, const torch::Tensor& c0,
                                        const torch::Tensor& w_ih, const torch::Tensor& w_hh,
                                        const torch::Tensor& bias, int64_t P) {
  check({{x, "x", at::kBFloat16}, {h0, "h0", at::kBFloat16}, {c0, "c0", at::kFloat}, {w_ih, "w_ih", at::kBFloat16},
         {w_hh, "w_hh", at::kBFloat16}, {bias, "bias", at::kFloat}});
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = h0.size(1);
  TORCH_CHECK(T >= 1 && B >= 1 && supports(I, H, P) && w_ih.size(0) == 4 * H && w_ih.size(1) == I &&
              w_hh.size(0) == 4 * H && w_hh.size(1) == H && bias.numel() == 4 * H && h0.size(0) == B &&
              c0.sizes() == h0.sizes(), "lstm_bf16.forward_pass: inconsistent shapes");
  auto f32 = x.options().dtype(at::kFloat);
  auto hbuf = torch::empty({T + 1, B, H}, x.options());
  auto cbuf = torch::empty({T + 1, B, H}, f32);
  auto gates = torch::empty({T, B, 4 * H}, f32);
  auto tc = torch::empty({T, B, H}, f32);
  hbuf.select(0, 0).copy_(h0);
  cbuf.select(0, 0).copy_(c0);
  const uint16_t* xb = bits(x);
  uint16_t* hb = bits_mut(hbuf);
  float* cb = cbuf.data_ptr<float>();
  float* gb = gates.data_ptr<float>();
  float* tcb = tc.data_ptr<float>();
  const float* bb = bias.data_ptr<float>();
  int64_t team = 0;
#pragma omp parallel num_threads(P)
  {
#pragma omp single
    team = omp_get_num_threads();
    if (team == P) {  // else (a nested region) nothing is computed and the check below fails
      const int64_t j = omp_get_thread_num();
      const int64_t u0 = block_begin(H, P, j), n = block_begin(H, P, j + 1) - u0, N = 4 * n;
      const auto wi = pack_gate_rows(bits(w_ih), I, H, u0, n);
      const auto wh = pack_gate_rows(bits(w_hh), H, H, u0, n);
      auto acc_t = torch::empty({B + 1, N}, torch::kFloat);  // x_t W_ih^T + h_{t-1} W_hh^T for its gate
      float* acc = acc_t.data_ptr<float>();                      // columns, then (row B) their biases
      float* bj = acc + B * N;
      for (int64_t q = 0; q < 4; ++q) std::copy(bb + q * H + u0, bb + q * H + u0 + n, bj + q * n);
      for (int64_t t = 0; t < T; ++t) {
        gemm(B, N, I, bf(xb + t * B * I), I, wi, acc, N);
        gemm(B, N, H, bf(hb + t * B * H), H, wh, acc, N, true);
        for (int64_t b = 0; b < B; ++b) {
          const int64_t row = (t * B + b) * H + u0;
          gate_row(acc + b * N, bj, gb + (t * B + b) * 4 * H + 4 * u0, cb + row, cb + row + B * H, tcb + row,
                   hb + row + B * H, n);
        }
#pragma omp barrier
      }
      cpublas::brgemm_release();
    }
  }
  TORCH_CHECK(team == P, "lstm_bf16.forward_pass: got ", team, " threads, not ", P);
  return {hbuf, cbuf, gates, tc};
}

// The backward pass. The forward's cbuf, gates and tc (same P); w_hh [4H, H] bf16; dout [T, B, H] bf16; dh_n, dc_n
// [B, H] fp32. Returns da [T, B, 4H] bf16 (the caller forms dW_ih, dW_hh and dx from it), db [4H] fp32 (the
// sum of da over steps and rows, before rounding), dh0 [B, H] and dc0 [B, H] fp32.
std::vector<torch::Tensor> backward_pass(const torch::Tensor& cbuf, const torch::Tensor& gates,
                                         const torch::Tensor& tc, const torch::Tensor& w_hh,
                                         const torch::Tensor& dout, const torch::Tensor& dh_n,
                                         const torch::Tensor& dc_n, int64_t P) {
  check({{cbuf, "cbuf", at::kFloat}, {gates, "gates", at::kFloat}, {tc, "tc", at::kFloat}, {w_hh, "w_hh", at::kBFloat16},
         {dout, "dout", at::kBFloat16}, {dh_n, "dh_n", at::kFloat}, {dc_n, "dc_n", at::kFloat}});
  const int64_t T = gates.size(0), B = gates.size(1), H = tc.size(2);
  TORCH_CHECK(splits(H, P) && w_hh.size(0) == 4 * H && w_hh.size(1) == H && dout.sizes() == tc.sizes() &&
              dh_n.size(0) == B && dh_n.size(1) == H && dc_n.sizes() == dh_n.sizes(),
              "lstm_bf16.backward_pass: inconsistent shapes");
  auto da = torch::empty({T, B, 4 * H}, dout.options());
  auto db = torch::zeros({4 * H}, dc_n.options());
  auto dc = dc_n.clone();
  auto dh0 = torch::empty({B, H}, dc_n.options());
  const float* cb = cbuf.data_ptr<float>();
  const float* gb = gates.data_ptr<float>();
  const float* tcb = tc.data_ptr<float>();
  const uint16_t* dob = bits(dout);
  const float* dhn = dh_n.data_ptr<float>();
  float* dcb = dc.data_ptr<float>();
  float* dbb = db.data_ptr<float>();
  float* dh0b = dh0.data_ptr<float>();
  uint16_t* dab = bits_mut(da);
  int64_t team = 0;
#pragma omp parallel num_threads(P)
  {
#pragma omp single
    team = omp_get_num_threads();
    if (team == P) {
      const int64_t j = omp_get_thread_num();
      const int64_t u0 = block_begin(H, P, j), n = block_begin(H, P, j + 1) - u0;
      const auto wh = pack_columns(bf(bits(w_hh) + u0), 4 * H, n, H);  // W_hh[:, its units], [4H, n]
      auto rec_t = torch::empty({B, n}, torch::kFloat);  // da_{t+1} W_hh for its units
      float* rec = rec_t.data_ptr<float>();
      float* dbi = dbb + u0;  // its units' entries of db, gate q at q * H
      for (int64_t t = T - 1; t >= 0; --t) {
        if (t < T - 1) gemm(B, n, 4 * H, bf(dab + (t + 1) * B * 4 * H), 4 * H, wh, rec, n);
        for (int64_t b = 0; b < B; ++b) {
          const float* g = gb + (t * B + b) * 4 * H + 4 * u0;
          const int64_t row = (t * B + b) * H + u0;
          const float* c_prev = cb + row;
          const float* tct = tcb + row;
          const uint16_t* dot = dob + row;
          const float* dh_next = t < T - 1 ? rec + b * n : dhn + b * H + u0;
          float* dcr = dcb + b * H + u0;
          uint16_t* dat = dab + (t * B + b) * 4 * H + u0;  // gate q of its units at q * H
#pragma omp simd
          for (int64_t u = 0; u < n; ++u) {
            const float i = g[u], f = g[n + u], gg = g[2 * n + u], o = g[3 * n + u], th = tct[u];
            const float dh = from_bf16(dot[u]) + dh_next[u];
            const float dcc = dcr[u] + dh * o * (1.0f - th * th);
            const float dai = dcc * gg * i * (1.0f - i), daf = dcc * c_prev[u] * f * (1.0f - f);
            const float dag = dcc * i * (1.0f - gg * gg), dao = dh * th * o * (1.0f - o);
            dat[u] = to_bf16_keep_nan(dai);
            dat[H + u] = to_bf16_keep_nan(daf);
            dat[2 * H + u] = to_bf16_keep_nan(dag);
            dat[3 * H + u] = to_bf16_keep_nan(dao);
            dbi[u] += dai;
            dbi[H + u] += daf;
            dbi[2 * H + u] += dag;
            dbi[3 * H + u] += dao;
            dcr[u] = dcc * f;
          }
        }
#pragma omp barrier
      }
      gemm(B, n, 4 * H, bf(dab), 4 * H, wh, dh0b + u0, H);  // dh0 = da_0 W_hh for its units
      cpublas::brgemm_release();
    }
  }
  TORCH_CHECK(team == P, "lstm_bf16.backward_pass: got ", team, " threads, not ", P);
  return {da, db, dh0, dc};
}

// Scoring without gradients (the importance-weighted likelihood's S samples of z per sentence): R rows whose
// input at step t is (x_{r mod B, t}, z_r), its projection given in two parts: e [B, T, 4H] fp32 = W_ih's x part
// times x plus both biases, once per sentence, and z [R, 4H] fp32 = W_ih's z part times z_r, once per row.
// w_hh [4H, H] bf16; h0 [R, H] bf16; c0 [R, H] fp32. Returns out [R, T, H] bf16 (batch-first).
// Rows are independent here, so the threads split the rows, not the units: no barrier. Each thread packs the
// whole W_hh (4H x H bf16, L2-sized at H = 256) and runs blocks of ROWS rows through all T steps, its
// block's fp32 sums [ROWS, 4H] and cells [ROWS, H] staying in its cache.
torch::Tensor score_pass(const torch::Tensor& e, const torch::Tensor& z, const torch::Tensor& w_hh,
                         const torch::Tensor& h0, const torch::Tensor& c0, int64_t P) {
  check({{e, "e", at::kFloat}, {z, "z", at::kFloat}, {w_hh, "w_hh", at::kBFloat16}, {h0, "h0", at::kBFloat16},
         {c0, "c0", at::kFloat}});
  constexpr int64_t ROWS = 32;
  const int64_t B = e.size(0), T = e.size(1), H = h0.size(1), R = h0.size(0);
  TORCH_CHECK(e.dim() == 3 && T >= 1 && B >= 1 && R % B == 0 && P >= 1 && splits(H, 1) && e.size(2) == 4 * H &&
              z.size(0) == R && z.size(1) == 4 * H && w_hh.size(0) == 4 * H && w_hh.size(1) == H &&
              c0.sizes() == h0.sizes(), "lstm_bf16.score_pass: inconsistent shapes");
  auto out = torch::empty({R, T, H}, h0.options());
  const float* eb = e.data_ptr<float>();
  const float* zb = z.data_ptr<float>();
  const uint16_t* h0b = bits(h0);
  const float* c0b = c0.data_ptr<float>();
  uint16_t* ob = bits_mut(out);
  const int64_t blocks = (R + ROWS - 1) / ROWS;
#pragma omp parallel num_threads(P)
  {
    const auto wh = pack_gate_rows(bits(w_hh), H, H, 0, H);  // [H, 4H]: PyTorch's gate order
    auto acc_t = torch::empty({ROWS, 4 * H}, torch::kFloat);
    auto c_t = torch::empty({ROWS, H}, torch::kFloat);
    float* acc = acc_t.data_ptr<float>();
    float* c = c_t.data_ptr<float>();
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t r0 = blk * ROWS, m = std::min(ROWS, R - r0);
      std::copy(c0b + r0 * H, c0b + (r0 + m) * H, c);
      for (int64_t t = 0; t < T; ++t) {
        // h_{t-1}: h0's rows, then the output's (row stride T H)
        const uint16_t* a = t == 0 ? h0b + r0 * H : ob + (r0 * T + t - 1) * H;
        gemm(m, 4 * H, H, bf(a), t == 0 ? H : T * H, wh, acc, 4 * H);
        for (int64_t b = 0; b < m; ++b) {
          const int64_t r = r0 + b;
          score_row(acc + b * 4 * H, eb + ((r % B) * T + t) * 4 * H, zb + r * 4 * H, c + b * H, ob + (r * T + t) * H, H);
        }
      }
    }
    cpublas::brgemm_release();
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("available", &available, "whether this CPU runs the kernel (AMX)");
  m.def("splits", &splits, "whether H hidden units split over P threads in whole blocks of 16");
  m.def("supports", &supports, "whether the kernel takes input size I and hidden size H with P threads");
  m.def("forward_pass", &forward_pass, "forward of a one-layer bf16 LSTM, time-major");
  m.def("score_pass", &score_pass, "forward of a one-layer bf16 LSTM without gradients, input projection given");
  m.def("backward_pass", &backward_pass, "backward of forward_pass: da, db, dh0, dc0");
}
