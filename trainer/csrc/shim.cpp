// shim.cpp: the C ABI over the LaVIT models: flat parameter and gradient
// buffers, the split training step, AdamW with schedule and groups, the VQ
// EMA, state bytes, evaluation. Every entry point catches every exception.
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/profiler_legacy.h>

// One source for both libtorch lines: Debian's 1.13 (CPU, CI) and PyTorch
// 2.x with CUDA (the GPU check builds against it). Every call here exists in
// both; the version is read, not assumed.
#ifndef TORCH_VERSION
#define TORCH_VERSION "unknown"
#endif

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <algorithm>
#include <array>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "lavit.h"
#include "models.h"

namespace F = torch::nn::functional;
using json = nlohmann::json;

namespace {

thread_local std::string g_error;
std::mutex g_construct_mu;  // torch::manual_seed is global

// Salts for per-sample randomness: training selection, evaluation, tokenization.
constexpr uint64_t kSaltTrain = 1, kSaltEval = 2, kSaltKMeans = 3;

struct Optim {
  double lr = 1e-3, selector_lr = 1e-2, min_lr_ratio = 0.1, weight_decay = 0.01;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, clip = 1.0;
  int64_t warmup_steps = 0, total_steps = 0;  // total 0 = constant after warmup

  double lr_at(int64_t step, double base) const {
    if (warmup_steps > 0 && step < warmup_steps) return base * static_cast<double>(step + 1) / warmup_steps;
    if (total_steps <= warmup_steps) return base;
    double t = std::min(1.0, static_cast<double>(step - warmup_steps) / (total_steps - warmup_steps));
    double min_lr = base * min_lr_ratio;
    return min_lr + 0.5 * (base - min_lr) * (1.0 + std::cos(M_PI * t));
  }
};

struct Segment {
  std::string name, group;
  int64_t offset = 0, numel = 0;
  std::vector<int64_t> shape;
  bool decay = false;
  torch::Tensor param;
};

// Reads a JSON object strictly: unknown keys are errors naming the key.
void check_keys(const json& obj, const std::string& where, const std::set<std::string>& allowed) {
  if (!obj.is_object()) throw std::invalid_argument(where + ": want a JSON object");
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    if (!allowed.count(it.key())) throw std::invalid_argument(where + ": unknown field \"" + it.key() + "\"");
  }
}

template <typename T>
void read(const json& obj, const char* key, T& out) {
  if (obj.contains(key)) out = obj.at(key).get<T>();
}

}  // namespace

struct lavit_model {
  int stage = 1;
  uint64_t seed = 0;
  torch::Device device{torch::kCPU};
  lavit::Tokenizer tok{nullptr};
  lavit::LM lm{nullptr};
  Optim opt;

  std::vector<Segment> segs;
  // Frozen parameters (the pretrained encoder): loaded from files, never
  // trained, not in the flat buffers.
  std::vector<std::pair<std::string, torch::Tensor>> frozen;
  torch::Tensor params, grads, exp_avg, exp_avg_sq;
  // Sharding (lavit_set_shard): this rank's shard of the flat buffers is
  // [shard_lo, shard_lo + shard_n); the Adam moments (and, at zero >= 1, the
  // fp32 master weights) cover only it. With zero 0 the shard is the whole
  // buffer. `trainable` is P, the flat buffers' length before padding.
  // block_n is ⌈P/world⌉: the flat buffers hold world blocks of it (the
  // tail is padding) at every stage, so that every stage cuts the
  // collective's buffer and the clipping norm's sums the same way.
  int zero = 0;
  int64_t rank = 0, world = 1, trainable = 0, shard_lo = 0, shard_n = 0, block_n = 0;
  torch::Tensor master;
  // Precision (lavit_set_precision): the parameters' and activations'
  // dtype (float32 or bfloat16; the optimizer is always float32). In bf16
  // with float32 reduction, `reduced` is the float32 buffer the bf16
  // gradients are accumulated into and the collective sums; otherwise the
  // collective sums `grads` itself.
  torch::ScalarType dtype = torch::kFloat;
  bool reduce_bf16 = false;
  torch::Tensor reduced;
  // A checkpoint's gathered moments (lavit_optim_gather), read and freed by
  // the next state_save, dropped by the next apply.
  torch::Tensor gathered;
  // The gradients' host copy for collectives that run on the host (made on
  // first use; pinned when the model is on a GPU).
  torch::Tensor staging;
  // Runs of contiguous segments sharing an optimizer treatment (group and
  // weight decay): the flat layout is sorted so there are only a few, and
  // AdamW loops over them with scalar settings instead of per-element masks.
  struct Run {
    std::string group;
    bool decay;
    int64_t offset, numel;
  };
  std::vector<Run> runs;
  std::set<std::string> frozen_groups;
  int64_t adam_t = 0;
  int64_t last_step = 0;
  bool vq_on = false, selector_frozen = false;

  // Micro-batches begun and not yet finished, oldest first; `finished`:
  // at least one finished since the last apply (its gradients are in the
  // buffer, waiting for more micro-batches or the apply).
  struct Pending {
    lavit::SelectOut sel;
    torch::Tensor valid, tokens, targets, img_feats, img_keep, img_slots;
    int64_t global_batch = 0;
  };
  std::deque<Pending> pending;
  bool finished = false;

  // Gradient buckets (lavit_set_buckets): contiguous ranges of the
  // collective's gradient buffer, the last parameters' first. Armed for
  // one backward (lavit_arm_buckets), a bucket is ready once every
  // parameter in it has its gradient (a post hook on each parameter's
  // gradient accumulator counts them down) or the backward has ended; a
  // reducing thread waits for each in turn (lavit_wait_bucket) while
  // backward goes on. `words_lo` and `words` are the bucket's range in
  // float32 words of the gradient buffer; `segs` the segments in it.
  struct Bucket {
    int64_t lo = 0, n = 0, words_lo = 0, words = 0;
    std::vector<int> segs;
    int pending = 0;
    bool ready = false;
  };
  struct Buckets {
    int64_t bytes = 0;  // 0: off
    std::vector<Bucket> list;
    std::vector<std::vector<int>> of_seg;  // per segment: the buckets it touches
    std::vector<char> fired;               // per segment, this backward
    std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;  // kept alive, hooked
    std::mutex mu;
    std::condition_variable cv;
    bool armed = false, failed = false;
    std::string error;
  } buckets;
  json metrics = json::object();
  bool in_flight() const { return !pending.empty(); }

  torch::nn::Module& root() { return stage == 1 ? static_cast<torch::nn::Module&>(*tok) : *lm; }
  int64_t patches() const { return tok ? tok->cfg.patches() : 0; }
};

namespace {

torch::TensorOptions f32(const lavit_model* m) { return torch::TensorOptions().dtype(torch::kFloat).device(m->device); }

bool is_bf16(const lavit_model* m) { return m->dtype == torch::kBFloat16; }

// comm_grads is the gradient buffer the collective sums: the float32
// accumulation buffer in bf16 with float32 reduction, else the flat .grad
// buffer itself.
torch::Tensor& comm_grads(lavit_model* m) { return m->reduced.defined() ? m->reduced : m->grads; }

// words is t's size in float32 words (a bf16 buffer packs two per word).
int64_t words(const torch::Tensor& t) { return t.defined() ? t.numel() * t.element_size() / 4 : 0; }

// has_master reports whether the optimizer keeps float32 master weights
// apart from the parameters: under ZeRO (its shard) and in bf16.
bool has_master(const lavit_model* m) { return m->zero >= 1 || is_bf16(m); }

// relayout (re)allocates the flat buffers with numel >= P values of the
// model's dtype (the tail is zero padding) and points every trainable
// parameter's data and .grad at views into them, keeping the parameters'
// values.
void relayout(lavit_model* m, int64_t numel) {
  auto opts = torch::TensorOptions().dtype(m->dtype).device(m->device);
  auto params = torch::zeros({numel}, opts);
  auto grads = torch::zeros({numel}, opts);
  torch::NoGradGuard no_grad;
  for (auto& s : m->segs) {
    auto pv = params.narrow(0, s.offset, s.numel);
    pv.copy_(s.param.reshape({-1}));
    s.param.set_data(pv.view(s.shape));
    s.param.mutable_grad() = grads.narrow(0, s.offset, s.numel).view(s.shape);
  }
  m->params = params;
  m->grads = grads;
  m->reduced = is_bf16(m) && !m->reduce_bf16 ? torch::zeros({numel}, f32(m)) : torch::Tensor();
  m->staging = torch::Tensor();
}

// Builds the flat buffers: every trainable parameter's data and .grad become
// views into one contiguous float32 tensor each.
void flatten(lavit_model* m) {
  for (auto& kv : m->root().named_parameters(/*recurse=*/true)) {
    if (!kv.value().requires_grad()) {
      m->frozen.push_back({kv.key(), kv.value()});
      continue;
    }
    Segment s;
    s.name = kv.key();
    s.param = kv.value();
    s.numel = s.param.numel();
    s.shape = s.param.sizes().vec();
    s.group = (m->stage == 1 && s.name.rfind("selector.", 0) == 0) ? "selector" : "main";
    s.decay = s.param.dim() >= 2;
    m->segs.push_back(s);
  }
  // Order by (group, decay), keeping registration order within each, so
  // each optimizer treatment is one contiguous run.
  std::stable_sort(m->segs.begin(), m->segs.end(), [](const Segment& a, const Segment& b) {
    return std::make_pair(a.group, !a.decay) < std::make_pair(b.group, !b.decay);
  });
  int64_t total = 0;
  for (auto& s : m->segs) {
    s.offset = total;
    total += s.numel;
    if (m->runs.empty() || m->runs.back().group != s.group || m->runs.back().decay != s.decay) {
      m->runs.push_back({s.group, s.decay, s.offset, 0});
    }
    m->runs.back().numel += s.numel;
  }
  m->trainable = total;
  m->shard_n = m->block_n = total;
  relayout(m, total);
}

// ensure_optim allocates the optimizer's flat buffers on first use (as
// PyTorch does), so building a large model for inspection costs only its
// parameters and gradients.
void ensure_optim(lavit_model* m) {
  if (m->exp_avg.defined()) return;
  m->exp_avg = torch::zeros({m->shard_n}, f32(m));
  m->exp_avg_sq = torch::zeros({m->shard_n}, f32(m));
  if (has_master(m)) {
    m->master = m->params.narrow(0, m->shard_lo, m->shard_n).to(torch::kFloat, /*non_blocking=*/false, /*copy=*/true);
  }
}

// sync_master copies the parameters' shard into the master weights after
// the parameters changed outside the optimizer (a state or weights loaded).
void sync_master(lavit_model* m) {
  torch::NoGradGuard no_grad;
  if (m->master.defined()) m->master.copy_(m->params.narrow(0, m->shard_lo, m->shard_n));
}

// set_shard makes the model rank `rank` of `world` at ZeRO stage `zero`
// (lavit.h): pads the flat buffers to world·ceil(P/world) and narrows the
// optimizer state to the rank's shard.
void set_shard(lavit_model* m, int64_t rank, int64_t world, int zero);

// layout sizes the flat buffers for the model's world, ZeRO stage and
// dtype: world blocks of ceil(P / world) values (rounded up to even in
// bf16, so a block is whole float32 words for the collectives), and
// narrows the optimizer state to the rank's shard.
void layout(lavit_model* m) {
  const int64_t P = m->trainable, W = m->world;
  int64_t S = (P + W - 1) / W;
  if (is_bf16(m)) S += S % 2;
  const bool want_reduced = is_bf16(m) && !m->reduce_bf16;
  if (S * W != m->params.numel() || m->params.scalar_type() != m->dtype || m->reduced.defined() != want_reduced) {
    relayout(m, S * W);
  }
  m->block_n = S;
  m->shard_lo = m->zero >= 1 ? m->rank * S : 0;
  m->shard_n = m->zero >= 1 ? S : P;
  m->exp_avg = m->exp_avg_sq = m->master = m->gathered = torch::Tensor();
  m->buckets.list.clear();  // planned again for this layout when armed
  m->buckets.accumulators.clear();
}

void check_fresh(const lavit_model* m, const char* what) {
  if (m->in_flight() || m->finished || m->adam_t > 0) {
    throw std::logic_error(std::string("set the ") + what + " on a fresh model (before its first step); load a state after it");
  }
}

void set_shard(lavit_model* m, int64_t rank, int64_t world, int zero) {
  if (zero < 0 || zero > 2) throw std::invalid_argument("zero must be 0, 1 or 2, got " + std::to_string(zero));
  if (world < 1 || rank < 0 || rank >= world) {
    throw std::invalid_argument("rank " + std::to_string(rank) + " of world " + std::to_string(world) + " is impossible");
  }
  check_fresh(m, "shard");
  m->zero = zero;
  m->rank = rank;
  m->world = world;
  layout(m);
}

// set_precision makes the model train in bf16 (lavit.h): parameters,
// frozen weights and activations in bfloat16 (the stage-1 codebook stays
// float32), float32 master weights in the optimizer, gradients reduced in
// float32 unless reduce_bf16.
void set_precision(lavit_model* m, bool bf16, bool reduce_bf16) {
  check_fresh(m, "precision");
  if (reduce_bf16 && !bf16) throw std::invalid_argument("bf16 gradient reduction needs bf16 precision");
  if (!bf16 && is_bf16(m)) throw std::logic_error("the model is already bf16: create a new model for float32");
  if (bf16 && !is_bf16(m)) {
    torch::NoGradGuard no_grad;
    m->root().to(torch::kBFloat16);
    if (m->tok) m->tok->codebook.set_data(m->tok->codebook.to(torch::kFloat));
    m->dtype = torch::kBFloat16;
  }
  m->reduce_bf16 = reduce_bf16;
  layout(m);
}

// plan_buckets cuts the gradient buffer into buckets of about
// buckets.bytes, walking the segments from the last (the first whose
// gradients backward writes) and cutting at segment starts (rounded down
// to a whole float32 word when the buffer is packed bf16); the padding
// tail goes with the last segments.
void plan_buckets(lavit_model* m) {
  auto& B = m->buckets;
  B.list.clear();
  B.of_seg.assign(m->segs.size(), {});
  if (B.bytes <= 0) return;
  const auto& buf = comm_grads(m);
  const int64_t per_word = 4 / buf.element_size(), elem = buf.element_size();
  int64_t cut = buf.numel(), acc = 0;
  for (int i = static_cast<int>(m->segs.size()) - 1; i >= 0; --i) {
    acc += m->segs[i].numel * elem;
    int64_t at = m->segs[i].offset / per_word * per_word;
    if ((acc >= B.bytes || i == 0) && at < cut) {
      if (i == 0) at = 0;
      lavit_model::Bucket b;
      b.lo = at;
      b.n = cut - at;
      b.words_lo = at / per_word;
      b.words = b.n / per_word;
      B.list.push_back(b);
      cut = at;
      acc = 0;
    }
  }
  for (int k = 0; k < static_cast<int>(B.list.size()); ++k) {
    auto& b = B.list[k];
    for (int i = 0; i < static_cast<int>(m->segs.size()); ++i) {
      const auto& sg = m->segs[i];
      if (sg.offset < b.lo + b.n && sg.offset + sg.numel > b.lo) {
        b.segs.push_back(i);
        B.of_seg[i].push_back(k);
      }
    }
  }
}

// move_bucket makes bucket b's gradients the collective's: in bf16 with
// float32 reduction, this micro-batch's bf16 gradients are added into
// (the step's first: copied to) the float32 buffer. Backward thread.
void move_bucket(lavit_model* m, const lavit_model::Bucket& b) {
  if (!m->reduced.defined()) return;
  torch::NoGradGuard no_grad;
  auto dst = m->reduced.narrow(0, b.lo, b.n);
  auto src = m->grads.narrow(0, b.lo, b.n);
  if (m->finished) {
    dst.add_(src);
  } else {
    dst.copy_(src);
  }
}

// grad_ready counts segment seg's gradient as written (its accumulator's
// post hook) and readies the buckets it completes.
void grad_ready(lavit_model* m, int seg) {
  auto& B = m->buckets;
  std::lock_guard<std::mutex> lock(B.mu);
  if (!B.armed || B.fired[seg]) return;
  B.fired[seg] = 1;
  for (int k : B.of_seg[seg]) {
    auto& b = B.list[k];
    if (--b.pending == 0 && !b.ready) {
      move_bucket(m, b);
      b.ready = true;
      B.cv.notify_all();
    }
  }
}

struct BucketHook : torch::autograd::FunctionPostHook {
  BucketHook(lavit_model* model, int segment) : m(model), seg(segment) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list& /*inputs*/) override {
    grad_ready(m, seg);
    return outputs;
  }
  lavit_model* m;
  int seg;
};

// arm_buckets readies the buckets for the next backward: hooks on every
// parameter's gradient accumulator (made once, kept alive), counts reset.
void arm_buckets(lavit_model* m) {
  auto& B = m->buckets;
  if (B.bytes <= 0) throw std::logic_error("arm buckets: no buckets (lavit_set_buckets)");
  if (B.list.empty() || B.of_seg.size() != m->segs.size()) plan_buckets(m);
  if (B.accumulators.size() != m->segs.size()) {
    B.accumulators.clear();
    for (int i = 0; i < static_cast<int>(m->segs.size()); ++i) {
      auto acc = torch::autograd::impl::grad_accumulator(m->segs[i].param);
      if (!acc) throw std::logic_error("arm buckets: parameter " + m->segs[i].name + " has no gradient accumulator");
      acc->add_post_hook(std::make_unique<BucketHook>(m, i));
      B.accumulators.push_back(acc);
    }
  }
  std::lock_guard<std::mutex> lock(B.mu);
  for (auto& b : B.list) {
    b.pending = static_cast<int>(b.segs.size());
    b.ready = false;
  }
  B.fired.assign(m->segs.size(), 0);
  B.failed = false;
  B.error.clear();
  B.armed = true;
}

// flush_buckets ends an armed backward: buckets whose parameters got no
// gradient this time are ready too (their gradients are zero).
void flush_buckets(lavit_model* m) {
  auto& B = m->buckets;
  std::lock_guard<std::mutex> lock(B.mu);
  for (auto& b : B.list) {
    if (!b.ready) {
      move_bucket(m, b);
      b.ready = true;
    }
  }
  B.armed = false;
  B.cv.notify_all();
}

// fail_buckets ends an armed backward that failed: waiters get the error.
void fail_buckets(lavit_model* m, const std::string& why) {
  auto& B = m->buckets;
  std::lock_guard<std::mutex> lock(B.mu);
  if (!B.armed) return;
  B.armed = false;
  B.failed = true;
  B.error = why;
  B.cv.notify_all();
}

// wait_bucket blocks until bucket k is ready (any thread).
void wait_bucket(lavit_model* m, int64_t k) {
  auto& B = m->buckets;
  std::unique_lock<std::mutex> lock(B.mu);
  if (k < 0 || k >= static_cast<int64_t>(B.list.size())) throw std::out_of_range("bucket " + std::to_string(k) + " out of range");
  B.cv.wait(lock, [&] { return B.list[k].ready || B.failed; });
  if (!B.list[k].ready) throw std::runtime_error("backward failed before bucket " + std::to_string(k) + " was ready: " + B.error);
}

// optim_sharded reports whether the moments on this rank are a part of the
// whole (a checkpoint must gather them first).
bool optim_sharded(const lavit_model* m) { return m->zero >= 1 && m->world > 1; }

// block_grad_sq is the trainable gradients' sum of squares over block b
// of the flat buffer (frozen groups and padding excluded).
double block_grad_sq(lavit_model* m, int64_t b) {
  torch::NoGradGuard no_grad;
  const int64_t from = b * m->block_n, to = from + m->block_n;
  double sq = 0;
  for (const auto& r : m->runs) {
    if (m->frozen_groups.count(r.group)) continue;
    const int64_t lo = std::max(r.offset, from), hi = std::min(r.offset + r.numel, to);
    if (lo < hi) sq += comm_grads(m).narrow(0, lo, hi - lo).to(torch::kFloat).pow(2).sum().item<double>();
  }
  return sq;
}

// as_float_pair is x as the two floats that carry it through a float32
// collective (their sum in double is x to about 48 bits).
std::pair<float, float> as_float_pair(double x) {
  const float hi = static_cast<float>(x);
  return {hi, static_cast<float>(x - static_cast<double>(hi))};
}

// global_grad_sq is the clipping norm's square from the whole buffer: the
// blocks' sums, each rounded to a float pair and added in block order,
// exactly what ZeRO-2's ranks compute from each other's pairs.
double global_grad_sq(lavit_model* m) {
  double sq = 0;
  for (int64_t b = 0; b < m->world; ++b) {
    auto [hi, lo] = as_float_pair(block_grad_sq(m, b));
    sq += static_cast<double>(hi) + static_cast<double>(lo);
  }
  return sq;
}

// A frozen group leaves the optimizer: neither its weights nor its moments
// move (MODEL.md's libtorch 1.13 trap with zero-but-defined gradients).
void freeze_group(lavit_model* m, const std::string& group) { m->frozen_groups.insert(group); }

lavit_model* create(const char* config_json, const char* device, uint64_t seed) {
  if (!config_json) throw std::invalid_argument("config is NULL");
  json cfg = json::parse(config_json);
  check_keys(cfg, "config", {"stage", "tokenizer", "lm", "optim"});
  auto m = std::make_unique<lavit_model>();
  m->seed = seed;
  m->device = torch::Device(device && *device ? device : "cpu");
  if (m->device.is_cuda() && !torch::cuda::is_available()) {
    throw std::runtime_error(std::string("device ") + device + " requested but this libtorch has no usable CUDA");
  }
  m->stage = cfg.value("stage", 1);
  if (m->stage != 1 && m->stage != 2) throw std::invalid_argument("config.stage must be 1 or 2");
  if (cfg.contains("optim")) {
    const auto& o = cfg["optim"];
    check_keys(o, "config.optim", {"lr", "selector_lr", "min_lr_ratio", "weight_decay", "beta1", "beta2", "eps",
                                   "clip", "warmup_steps", "total_steps"});
    read(o, "lr", m->opt.lr);
    read(o, "selector_lr", m->opt.selector_lr);
    read(o, "min_lr_ratio", m->opt.min_lr_ratio);
    read(o, "weight_decay", m->opt.weight_decay);
    read(o, "beta1", m->opt.beta1);
    read(o, "beta2", m->opt.beta2);
    read(o, "eps", m->opt.eps);
    read(o, "clip", m->opt.clip);
    read(o, "warmup_steps", m->opt.warmup_steps);
    read(o, "total_steps", m->opt.total_steps);
    if (!(m->opt.lr > 0)) throw std::invalid_argument("config.optim.lr must be positive");
  }
  std::lock_guard<std::mutex> lock(g_construct_mu);
  torch::manual_seed(seed);
  if (m->stage == 1) {
    lavit::TokenizerConfig c;
    if (cfg.contains("tokenizer")) {
      const auto& t = cfg["tokenizer"];
      check_keys(t, "config.tokenizer",
                 {"image", "patch", "channels", "width", "heads", "mlp_ratio", "merger_blocks", "decoder_blocks",
                  "code_dim", "codebook", "rho", "ratio_weight", "commit_beta", "ema_decay", "gumbel_tau",
                  "decoder_locality_alpha", "encoder_pos_scale", "kmeans_iters", "mlp_hidden", "encoder",
                  "encoder_blocks", "encoder_heads", "encoder_mlp_hidden"});
      read(t, "mlp_hidden", c.mlp_hidden);
      read(t, "encoder", c.encoder);
      read(t, "encoder_blocks", c.encoder_blocks);
      read(t, "encoder_heads", c.encoder_heads);
      read(t, "encoder_mlp_hidden", c.encoder_mlp_hidden);
      read(t, "image", c.image);
      read(t, "patch", c.patch);
      read(t, "channels", c.channels);
      read(t, "width", c.width);
      read(t, "heads", c.heads);
      read(t, "mlp_ratio", c.mlp_ratio);
      read(t, "merger_blocks", c.merger_blocks);
      read(t, "decoder_blocks", c.decoder_blocks);
      read(t, "code_dim", c.code_dim);
      read(t, "codebook", c.codebook);
      read(t, "rho", c.rho);
      read(t, "ratio_weight", c.ratio_weight);
      read(t, "commit_beta", c.commit_beta);
      read(t, "ema_decay", c.ema_decay);
      read(t, "gumbel_tau", c.gumbel_tau);
      read(t, "decoder_locality_alpha", c.decoder_locality_alpha);
      read(t, "encoder_pos_scale", c.encoder_pos_scale);
      read(t, "kmeans_iters", c.kmeans_iters);
    }
    m->tok = lavit::Tokenizer(c, seed);
    m->tok->to(m->device);
  } else {
    lavit::LMConfig c;
    if (cfg.contains("lm")) {
      const auto& l = cfg["lm"];
      check_keys(l, "config.lm", {"arch", "vocab", "d_model", "layers", "heads", "mlp", "max_len", "rope_theta", "norm_eps",
                                  "image_input", "vis_width", "vis_heads", "vis_mlp_hidden", "vis_merger_blocks",
                                  "vis_patches"});
      read(l, "image_input", c.image_input);
      read(l, "vis_width", c.vis_width);
      read(l, "vis_heads", c.vis_heads);
      read(l, "vis_mlp_hidden", c.vis_mlp_hidden);
      read(l, "vis_merger_blocks", c.vis_merger_blocks);
      read(l, "vis_patches", c.vis_patches);
      read(l, "arch", c.arch);
      read(l, "rope_theta", c.rope_theta);
      read(l, "norm_eps", c.norm_eps);
      read(l, "vocab", c.vocab);
      read(l, "d_model", c.d_model);
      read(l, "layers", c.layers);
      read(l, "heads", c.heads);
      read(l, "mlp", c.mlp);
      read(l, "max_len", c.max_len);
    }
    m->lm = lavit::LM(c);
    m->lm->to(m->device);
  }
  flatten(m.get());
  return m.release();
}

torch::Tensor images_tensor(const lavit_model* m, const float* images, int64_t n) {
  if (!images) throw std::invalid_argument("images is NULL");
  const auto& c = m->tok->cfg;
  auto t = torch::from_blob(const_cast<float*>(images), {n, c.channels, c.image, c.image}, torch::kFloat).clone();
  if (!torch::isfinite(t).all().item<bool>()) throw std::invalid_argument("images contain NaN or Inf");
  return t.to(m->device, m->dtype);
}

std::vector<int64_t> positions_vec(const int64_t* positions, int64_t n) {
  if (!positions) throw std::invalid_argument("positions is NULL");
  return std::vector<int64_t>(positions, positions + n);
}

void check_batch(const lavit_model* m, const lavit_batch* b) {
  if (!b) throw std::invalid_argument("batch is NULL");
  if (b->batch <= 0) throw std::invalid_argument("batch size must be positive");
  if (b->global_batch < b->batch) throw std::invalid_argument("global_batch is smaller than the local batch");
  if (b->step < 0) throw std::invalid_argument("step is negative");
}

// Stage-2 inputs of a batch: tokens, targets (optional), and the continuous
// image inputs when the model takes them.
struct LMInputs {
  torch::Tensor tokens, targets, feats, keep, slots;
};

LMInputs lm_inputs(lavit_model* m, const lavit_batch* b, bool need_targets) {
  LMInputs in;
  const auto V = m->lm->cfg.vocab;
  if (!b->tokens || (need_targets && !b->targets)) throw std::invalid_argument("stage 2 needs tokens and targets");
  if (b->seq_len <= 0 || b->seq_len > m->lm->cfg.max_len) {
    throw std::invalid_argument("seq_len " + std::to_string(b->seq_len) + " out of range 1.." +
                                std::to_string(m->lm->cfg.max_len));
  }
  in.tokens = torch::from_blob(const_cast<int64_t*>(b->tokens), {b->batch, b->seq_len}, torch::kLong).clone();
  if ((in.tokens < 0).any().item<bool>() || (in.tokens >= V).any().item<bool>()) {
    throw std::invalid_argument("token id out of range 0.." + std::to_string(V - 1));
  }
  if (need_targets) {
    in.targets = torch::from_blob(const_cast<int64_t*>(b->targets), {b->batch, b->seq_len}, torch::kLong).clone();
    if ((in.targets < -1).any().item<bool>() || (in.targets >= V).any().item<bool>()) {
      throw std::invalid_argument("target id out of range -1.." + std::to_string(V - 1));
    }
    in.targets = in.targets.to(m->device);
  }
  if (b->image_slots) {
    if (!m->lm->continuous()) throw std::invalid_argument("image inputs given to a model with lm.image_input discrete");
    if (!b->image_feats || !b->image_keep) throw std::invalid_argument("image slots need image features and keep decisions");
    const auto& c = m->lm->cfg;
    in.feats = torch::from_blob(const_cast<float*>(b->image_feats), {b->batch, c.vis_patches, c.vis_width}, torch::kFloat).clone();
    if (!torch::isfinite(in.feats).all().item<bool>()) throw std::invalid_argument("image features contain NaN or Inf");
    in.keep = torch::from_blob(const_cast<uint8_t*>(b->image_keep), {b->batch, c.vis_patches}, torch::kUInt8).to(torch::kFloat);
    in.slots = torch::from_blob(const_cast<uint8_t*>(b->image_slots), {b->batch, b->seq_len}, torch::kUInt8).clone();
    auto kept = in.keep.sum(1).to(torch::kLong), want = in.slots.sum(1).to(torch::kLong);
    if ((want > kept).any().item<bool>()) throw std::invalid_argument("a sample has more image slots than kept tokens");
    in.feats = in.feats.to(m->device, m->dtype);
    in.keep = in.keep.to(m->device, m->dtype);
    in.slots = in.slots.to(m->device);
  }
  in.tokens = in.tokens.to(m->device);
  return in;
}

void step_begin(lavit_model* m, const lavit_batch* b, float* pre) {
  check_batch(m, b);
  auto pos = positions_vec(b->positions, b->batch);
  torch::Tensor valid = b->valid ? torch::from_blob(const_cast<uint8_t*>(b->valid), {b->batch}, torch::kUInt8)
                                       .to(torch::kFloat)
                                 : torch::ones({b->batch});
  if (!m->pending.empty() && m->pending.front().global_batch != b->global_batch) {
    throw std::invalid_argument("micro-batches of one step disagree on the global batch");
  }
  lavit_model::Pending p;
  if (m->stage == 1) {
    if (!pre) throw std::invalid_argument("pre_stats is NULL");
    auto images = images_tensor(m, b->images, b->batch);
    p.sel = m->tok->select(images, pos, b->step, m->seed, kSaltTrain);
    p.valid = valid.to(m->device);
    auto kept = (p.sel.keep_hard * p.valid.unsqueeze(1)).sum().item<double>();
    pre[0] = static_cast<float>(kept);
    pre[1] = static_cast<float>(valid.sum().item<double>() * m->patches());
  } else {
    auto in = lm_inputs(m, b, true);
    p.tokens = in.tokens;
    p.targets = in.targets;
    p.img_feats = in.feats;
    p.img_keep = in.keep;
    p.img_slots = in.slots;
    p.valid = valid.to(m->device);
  }
  p.global_batch = b->global_batch;
  m->last_step = b->step;
  m->pending.push_back(std::move(p));
}

int64_t pre_stats_numel(const lavit_model* m) { return m->stage == 1 ? 2 : 0; }
int64_t post_stats_numel(const lavit_model* m) {
  return m->stage == 1 ? m->tok->cfg.codebook * (m->tok->cfg.code_dim + 1) : 0;
}

double step_finish(lavit_model* m, const float* gpre, float* post) {
  if (!m->in_flight()) throw std::logic_error("no step in flight: call step_begin first");
  // Whatever happens, this micro-batch's graph is dropped below.
  auto p = std::move(m->pending.front());
  m->pending.pop_front();
  // The step's first micro-batch starts the sums; in bf16 with float32
  // reduction the bf16 buffer holds one micro-batch, added into `reduced`.
  if (!m->finished || m->reduced.defined()) m->grads.zero_();
  json met = json::object();
  double local_sum = 0;
  if (m->stage == 1) {
    if (!gpre) throw std::invalid_argument("global pre_stats is NULL");
    auto& tok = m->tok;
    const auto& c = tok->cfg;
    const double N = static_cast<double>(c.patches());
    const double count = std::max<double>(gpre[1], 1.0);
    const double keep_mean = gpre[0] / count;
    const double real_samples = count / N;
    auto sel = std::move(p.sel);
    auto valid = p.valid;
    auto z = tok->merge(sel);
    torch::Tensor zst = z, commit = torch::zeros({z.size(0)}, f32(m)), idx;
    if (m->vq_on) {
      idx = tok->nearest(z.detach());
      auto zq = tok->codebook.index_select(0, idx.view(-1)).view(z.sizes());
      auto mse = (zq - z).pow(2).mean(-1);  // [B,N]
      commit = c.commit_beta * (mse * sel.keep_hard).sum(1) / sel.keep_hard.sum(1).clamp_min(1.0);
      zst = z + (zq.to(z.scalar_type()) - z).detach();
    }
    auto xhat = tok->decode(zst, sel.keep, sel.keep_hard);
    auto cos = F::cosine_similarity(xhat.to(torch::kFloat), sel.feats.to(torch::kFloat),
                                    F::CosineSimilarityFuncOptions().dim(-1));
    auto rec = (1.0 - cos).mean(1);  // [B]
    auto per_sample = (rec + commit) * valid;
    auto loss_sum = per_sample.sum();
    // The ratio penalty λ(ρ − m̄)² over the global batch, as a surrogate whose
    // gradient, summed over ranks and divided by the global batch, is exact.
    const double coef = -2.0 * c.ratio_weight * (c.rho - keep_mean) * p.global_batch / (real_samples * N);
    auto surrogate = coef * (sel.keep * valid.unsqueeze(1)).sum();
    (loss_sum + surrogate).backward();
    local_sum = loss_sum.item<double>();
    const double penalty = c.ratio_weight * (c.rho - keep_mean) * (c.rho - keep_mean);
    met["rec_sum"] = (rec * valid).sum().item<double>();
    met["commit_sum"] = (commit * valid).sum().item<double>();
    met["ratio_penalty"] = penalty;
    met["keep_mean"] = keep_mean;
    met["vq"] = m->vq_on ? 1 : 0;
    if (m->vq_on) {
      if (!post) throw std::invalid_argument("post_stats is NULL");
      torch::NoGradGuard no_grad;
      const int64_t K = c.codebook, C = c.code_dim;
      auto w = (sel.keep_hard * valid.unsqueeze(1)).reshape({-1});  // [B*N]
      auto onehot = F::one_hot(idx.reshape({-1}), K).to(torch::kFloat) * w.unsqueeze(1);  // [B*N,K]
      auto sums = torch::matmul(onehot.t(), z.detach().reshape({-1, C}).to(torch::kFloat));  // [K,C]
      auto counts = onehot.sum(0);                                                       // [K]
      auto out = torch::cat({sums.reshape({-1}), counts}).to(torch::kCPU).contiguous();
      std::memcpy(post, out.data_ptr<float>(), sizeof(float) * out.numel());
    } else if (post) {
      std::memset(post, 0, sizeof(float) * post_stats_numel(m));
    }
  } else {
    auto logits = m->lm->forward(p.tokens, p.img_feats, p.img_keep, p.img_slots);
    auto logp = torch::log_softmax(logits.to(torch::kFloat), -1);  // the loss in float32
    auto mask = (p.targets >= 0).to(torch::kFloat);
    auto nll = -logp.gather(-1, p.targets.clamp_min(0).unsqueeze(-1)).squeeze(-1) * mask;
    auto per_sample = nll.sum(1) / mask.sum(1).clamp_min(1.0) * p.valid;
    auto loss_sum = per_sample.sum();
    loss_sum.backward();
    local_sum = loss_sum.item<double>();
    met["tokens"] = mask.sum().item<double>();
  }
  if (m->buckets.armed) {
    flush_buckets(m);  // each bucket's gradients went to `reduced` as it became ready
  } else if (m->reduced.defined()) {
    torch::NoGradGuard no_grad;
    if (m->finished) {
      m->reduced.add_(m->grads);
    } else {
      m->reduced.copy_(m->grads);
    }
  }
  met["loss_sum"] = local_sum;
  met["samples"] = p.valid.sum().item<double>();
  if (m->finished) {
    // A later micro-batch of the step: sums add up, the rest is the same.
    for (const char* k : {"loss_sum", "samples", "tokens", "rec_sum", "commit_sum"}) {
      if (met.contains(k) && m->metrics.contains(k)) met[k] = met[k].get<double>() + m->metrics[k].get<double>();
    }
  }
  m->metrics = met;
  m->finished = true;
  return local_sum;
}

void step_apply(lavit_model* m, int64_t global_batch, const float* gpost, double grad_sq) {
  if (m->in_flight()) throw std::logic_error("micro-batches begun but not finished: finish them before the apply");
  if (!m->finished) throw std::logic_error("no finished step to apply: call step_finish first");
  if (global_batch <= 0) throw std::invalid_argument("global_batch must be positive");
  if (grad_sq < 0 && m->zero == 2 && m->world > 1) {
    throw std::invalid_argument("zero 2: the gradients are reduce-scattered; pass the global sum of squares (lavit_grad_sq summed over ranks)");
  }
  m->finished = false;
  m->gathered = torch::Tensor();
  ensure_optim(m);
  torch::NoGradGuard no_grad;
  // Global gradient norm over the trainable runs, of the averaged gradient.
  const double sq = grad_sq >= 0 ? grad_sq : global_grad_sq(m);
  if (!std::isfinite(sq)) throw std::runtime_error("gradients contain NaN or Inf; step not applied");
  const double norm = std::sqrt(sq) / static_cast<double>(global_batch);
  double scale = 1.0 / static_cast<double>(global_batch);
  if (m->opt.clip > 0 && norm > m->opt.clip) scale *= m->opt.clip / (norm + 1e-6);
  m->metrics["grad_norm"] = norm;
  m->adam_t += 1;
  const double lr = m->opt.lr_at(m->last_step, m->opt.lr);
  m->metrics["lr"] = lr;
  const double b1 = m->opt.beta1, b2 = m->opt.beta2;
  const double bc1 = 1 - std::pow(b1, static_cast<double>(m->adam_t));
  const double bc2 = 1 - std::pow(b2, static_cast<double>(m->adam_t));
  // AdamW over this rank's shard of each trainable run (the whole run at
  // zero 0); at zero >= 1 on the master weights, copied into the
  // parameters' shard afterwards (the caller all-gathers the rest).
  // The update runs in chunks of kOptimChunk elements, so its temporaries
  // (the scaled gradient, the update) stay a few tens of megabytes however
  // large the model: the arithmetic is element-wise, chunks change no bit.
  constexpr int64_t kOptimChunk = int64_t(1) << 22;
  for (const auto& r : m->runs) {
    if (m->frozen_groups.count(r.group)) continue;
    const int64_t lo = std::max(r.offset, m->shard_lo), hi = std::min(r.offset + r.numel, m->shard_lo + m->shard_n);
    const double run_lr = r.group == "selector" ? lr * m->opt.selector_lr / m->opt.lr : lr;
    for (int64_t c = lo; c < hi; c += kOptimChunk) {
      const int64_t n = std::min(kOptimChunk, hi - c);
      auto g = comm_grads(m).narrow(0, c, n).to(torch::kFloat) * scale;
      auto ea = m->exp_avg.narrow(0, c - m->shard_lo, n);
      auto eas = m->exp_avg_sq.narrow(0, c - m->shard_lo, n);
      auto p = has_master(m) ? m->master.narrow(0, c - m->shard_lo, n) : m->params.narrow(0, c, n);
      ea.mul_(b1).add_(g, 1 - b1);
      eas.mul_(b2).addcmul_(g, g, 1 - b2);
      auto update = (ea / bc1) / ((eas / bc2).sqrt() + m->opt.eps);
      if (r.decay) update.add_(p, m->opt.weight_decay);
      p.sub_(update, run_lr);
    }
  }
  if (has_master(m)) m->params.narrow(0, m->shard_lo, m->shard_n).copy_(m->master);
  if (m->stage == 1 && m->vq_on) {
    if (!gpost) throw std::invalid_argument("global post_stats is NULL");
    const auto& c = m->tok->cfg;
    const int64_t K = c.codebook, C = c.code_dim;
    auto stats = torch::from_blob(const_cast<float*>(gpost), {K * (C + 1)}, torch::kFloat).to(m->device);
    auto sums = stats.narrow(0, 0, K * C).view({K, C});
    auto counts = stats.narrow(0, K * C, K);
    auto used = (counts > 0).unsqueeze(1);
    auto centroid = F::normalize(sums / counts.clamp_min(1.0).unsqueeze(1), F::NormalizeFuncOptions().dim(-1));
    auto next = F::normalize(m->tok->codebook * c.ema_decay + centroid * (1 - c.ema_decay),
                             F::NormalizeFuncOptions().dim(-1));
    m->tok->codebook.copy_(torch::where(used, next, m->tok->codebook));  // dead codes keep their value
    m->metrics["codes_used"] = (counts > 0).sum().item<double>();
  }
}

// Spherical k-means on rows of x (l2-normalised), seeded.
torch::Tensor kmeans(const torch::Tensor& x, int64_t K, int64_t iters, uint64_t key) {
  auto gen = at::detail::createCPUGenerator(key);
  const int64_t M = x.size(0);
  torch::Tensor init;
  if (M >= K) {
    init = x.index_select(0, torch::randperm(M, gen).narrow(0, 0, K).to(x.device()));
  } else {
    auto pick = torch::randint(M, {K}, gen).to(x.device());
    init = x.index_select(0, pick) + 0.01 * torch::randn({K, x.size(1)}, gen).to(x.device());
  }
  auto cent = F::normalize(init, F::NormalizeFuncOptions().dim(-1));
  for (int64_t it = 0; it < iters; ++it) {
    auto assign = torch::matmul(x, cent.t()).argmax(-1);
    auto onehot = F::one_hot(assign, K).to(torch::kFloat);
    auto sums = torch::matmul(onehot.t(), x);
    auto counts = onehot.sum(0).unsqueeze(1);
    auto next = F::normalize(sums / counts.clamp_min(1.0), F::NormalizeFuncOptions().dim(-1));
    cent = torch::where(counts > 0, next, cent);  // empty clusters keep their centre
  }
  return cent;
}

void vq_enable(lavit_model* m, const float* images, int64_t n, const int64_t* positions, int64_t step) {
  if (m->stage != 1) throw std::logic_error("vq_enable is for stage-1 models");
  if (m->in_flight()) throw std::logic_error("a step is in flight");
  if (n <= 0) throw std::invalid_argument("vq_enable needs at least one image");
  torch::NoGradGuard no_grad;
  auto imgs = images_tensor(m, images, n);
  auto pos = positions_vec(positions, n);
  auto sel = m->tok->select(imgs, pos, step, m->seed, kSaltKMeans);
  auto z = m->tok->merge(sel);
  auto kept = sel.keep_hard.reshape({-1}) > 0;
  auto rows = z.reshape({-1, z.size(-1)}).index({kept}).to(torch::kFloat);
  if (rows.size(0) == 0) throw std::runtime_error("vq_enable: the selector kept no tokens in these images");
  const auto& c = m->tok->cfg;
  m->tok->codebook.copy_(kmeans(rows, c.codebook, c.kmeans_iters, lavit::sample_key(m->seed, kSaltKMeans, step, 0)));
  m->vq_on = true;
  if (!m->selector_frozen) {
    freeze_group(m, "selector");
    m->selector_frozen = true;
  }
}

// ---- state bytes -------------------------------------------------------------
// "LAVITST1" | u32 format | u32 stage | u64 adam_t | u64 last_step | u8 vq_on | u8 selector_frozen
// | u32 tensor count | per tensor: u32 name length, name, u64 numel, float32 data
// | u32 FNV-1a checksum of everything before it.

constexpr char kMagic[8] = {'L', 'A', 'V', 'I', 'T', 'S', 'T', '1'};

uint32_t fnv1a(const uint8_t* p, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 16777619u;
  return h;
}

// gather_parts is how many flat float32 tensors lavit_optim_gather
// collects: the two moments, and in bf16 the master weights first (the
// state's float32 parameters).
int64_t gather_parts(const lavit_model* m) { return is_bf16(m) ? 3 : 2; }

// state_tensors are the state's tensors in order, whole (P values each for
// the flat ones, padding left out, float32): the same at every world size,
// ZeRO stage and precision (a bf16 model saves its float32 master weights).
// Sharded ones come from the gathered buffer (lavit_optim_gather).
std::vector<std::pair<std::string, torch::Tensor>> state_tensors(lavit_model* m) {
  ensure_optim(m);
  const int64_t P = m->trainable;
  torch::Tensor pv = is_bf16(m) ? m->master : m->params, ea = m->exp_avg, eas = m->exp_avg_sq;
  if (optim_sharded(m)) {
    if (!m->gathered.defined()) throw std::logic_error("the optimizer state is sharded: gather it first (lavit_optim_gather and an all-gather)");
    const int64_t n = m->params.numel();
    int64_t at = 0;
    if (is_bf16(m)) {
      pv = m->gathered.narrow(0, 0, n);
      at = n;
    }
    ea = m->gathered.narrow(0, at, n);
    eas = m->gathered.narrow(0, at + n, n);
  }
  std::vector<std::pair<std::string, torch::Tensor>> t = {
      {"params", pv.narrow(0, 0, P)}, {"exp_avg", ea.narrow(0, 0, P)}, {"exp_avg_sq", eas.narrow(0, 0, P)}};
  if (m->stage == 1) t.push_back({"codebook", m->tok->codebook});
  return t;
}

// state_numels are the state's tensor names and sizes in order.
std::vector<std::pair<std::string, int64_t>> state_numels(const lavit_model* m) {
  const int64_t P = m->trainable;
  std::vector<std::pair<std::string, int64_t>> t = {{"params", P}, {"exp_avg", P}, {"exp_avg_sq", P}};
  if (m->stage == 1) t.push_back({"codebook", m->tok->codebook.numel()});
  return t;
}

template <typename T>
void put(std::vector<uint8_t>& out, T v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  out.insert(out.end(), p, p + sizeof(T));
}

std::vector<uint8_t> state_save(lavit_model* m) {
  if (m->in_flight()) throw std::logic_error("cannot save while a step is in flight");
  std::vector<uint8_t> out(kMagic, kMagic + 8);
  put<uint32_t>(out, LAVIT_STATE_FORMAT);
  put<uint32_t>(out, static_cast<uint32_t>(m->stage));
  put<uint64_t>(out, static_cast<uint64_t>(m->adam_t));
  put<uint64_t>(out, static_cast<uint64_t>(m->last_step));
  put<uint8_t>(out, m->vq_on);
  put<uint8_t>(out, m->selector_frozen);
  auto ts = state_tensors(m);
  put<uint32_t>(out, static_cast<uint32_t>(ts.size()));
  for (auto& [name, t] : ts) {
    put<uint32_t>(out, static_cast<uint32_t>(name.size()));
    out.insert(out.end(), name.begin(), name.end());
    auto cpu = t.detach().to(torch::kCPU).contiguous().reshape({-1});
    put<uint64_t>(out, static_cast<uint64_t>(cpu.numel()));
    const auto* p = reinterpret_cast<const uint8_t*>(cpu.data_ptr<float>());
    out.insert(out.end(), p, p + cpu.numel() * sizeof(float));
  }
  put<uint32_t>(out, fnv1a(out.data(), out.size()));
  m->gathered = torch::Tensor();  // one checkpoint's worth
  return out;
}

// ---- blocked states (format 2: a checkpoint written shard by shard) ----------
// A blocked state is a header part and one part per block of the flat
// buffers, each rank writing its own block (lavit_state_part), so no rank
// needs another's optimizer state to checkpoint:
//   header: "LAVITST1" | u32 format 2 | u32 stage | u64 adam_t | u64 last_step
//           | u8 vq_on | u8 selector_frozen | u64 P | u64 block | u32 blocks
//           | u64 codebook numel | float32 codebook | u32 CRC-32C of the header
//   block b: u32 b | u64 n_b | float32 params[n_b] | exp_avg[n_b] | exp_avg_sq[n_b]
//           | u32 CRC-32C of the block
// with n_b = clamp(P - b·block, 0, block) (padding is never stored). Part 0
// is the header and block 0, part b block b. The parameters are float32
// (a bf16 model's master weights). Each part carries its own checksum, so
// no rank needs the others' bytes to write its part.

constexpr uint32_t kStateFormatBlocked = LAVIT_STATE_FORMAT_BLOCKED;

uint32_t crc32c(const uint8_t* p, size_t n, uint32_t crc = 0) {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

int64_t blocked_header_bytes(const lavit_model* m) {
  const int64_t cb = m->stage == 1 ? m->tok->codebook.numel() : 0;
  return 8 + 4 + 4 + 8 + 8 + 1 + 1 + 8 + 8 + 4 + 8 + 4 * cb + 4;
}

int64_t block_values(int64_t P, int64_t block, int64_t b) { return std::clamp<int64_t>(P - b * block, 0, block); }

// flat_values is values [from, from + n) of the state's float32 flat
// tensor `which` (0 parameters, 1 exp_avg, 2 exp_avg_sq) from what this
// rank holds, on the CPU.
torch::Tensor flat_values(lavit_model* m, int which, int64_t from, int64_t n) {
  const bool own = which > 0 || is_bf16(m);  // held as the rank's shard (or whole at zero 0)
  if (own && (from < m->shard_lo || from + n > m->shard_lo + m->shard_n)) {
    throw std::logic_error("state part: values outside this rank's shard");
  }
  torch::Tensor t = which == 0 ? (is_bf16(m) ? m->master : m->params) : which == 1 ? m->exp_avg : m->exp_avg_sq;
  return t.narrow(0, own ? from - m->shard_lo : from, n).detach().to(torch::kCPU, torch::kFloat).contiguous();
}

struct Writer {
  uint8_t* p;
  int64_t off = 0;
  template <typename T>
  void put(T v) {
    std::memcpy(p + off, &v, sizeof(T));
    off += sizeof(T);
  }
  void floats(const torch::Tensor& t) {
    std::memcpy(p + off, t.data_ptr<float>(), t.numel() * sizeof(float));
    off += t.numel() * sizeof(float);
  }
};

// state_part writes this rank's part of a blocked state into a malloc'd
// buffer: the header (rank 0) and block `rank` of `world` blocks.
std::pair<uint8_t*, int64_t> state_part(lavit_model* m) {
  if (m->in_flight()) throw std::logic_error("cannot save while a step is in flight");
  ensure_optim(m);
  const int64_t P = m->trainable, block = m->block_n, b = m->rank;
  const int64_t n = block_values(P, block, b);
  const int64_t header = b == 0 ? blocked_header_bytes(m) : 0;
  const int64_t len = header + 16 + 12 * n;
  auto* buf = static_cast<uint8_t*>(std::malloc(static_cast<size_t>(len)));
  if (!buf) throw std::bad_alloc();
  try {
    Writer w{buf};
    if (b == 0) {
      for (char c : kMagic) w.put<char>(c);
      w.put<uint32_t>(kStateFormatBlocked);
      w.put<uint32_t>(static_cast<uint32_t>(m->stage));
      w.put<uint64_t>(static_cast<uint64_t>(m->adam_t));
      w.put<uint64_t>(static_cast<uint64_t>(m->last_step));
      w.put<uint8_t>(m->vq_on);
      w.put<uint8_t>(m->selector_frozen);
      w.put<uint64_t>(static_cast<uint64_t>(P));
      w.put<uint64_t>(static_cast<uint64_t>(block));
      w.put<uint32_t>(static_cast<uint32_t>(m->world));
      auto cb = m->stage == 1 ? m->tok->codebook.detach().to(torch::kCPU, torch::kFloat).contiguous().reshape({-1})
                              : torch::empty({0}, torch::kFloat);
      w.put<uint64_t>(static_cast<uint64_t>(cb.numel()));
      w.floats(cb);
      w.put<uint32_t>(crc32c(buf, static_cast<size_t>(w.off)));
    }
    const int64_t at = w.off;
    w.put<uint32_t>(static_cast<uint32_t>(b));
    w.put<uint64_t>(static_cast<uint64_t>(n));
    for (int which : {0, 1, 2}) {
      if (n > 0) w.floats(flat_values(m, which, b * block, n));
    }
    w.put<uint32_t>(crc32c(buf + at, static_cast<size_t>(w.off - at)));
    if (w.off != len) throw std::logic_error("state part: wrote " + std::to_string(w.off) + " of " + std::to_string(len) + " bytes");
  } catch (...) {
    std::free(buf);
    throw;
  }
  return {buf, len};
}

struct Reader {
  const uint8_t* p;
  size_t n, off = 0;
  template <typename T>
  T get(const char* what) {
    if (off + sizeof(T) > n) throw std::invalid_argument(std::string("state is truncated (reading ") + what + ")");
    T v;
    std::memcpy(&v, p + off, sizeof(T));
    off += sizeof(T);
    return v;
  }
};

void state_load_blocked(lavit_model* m, const uint8_t* data, int64_t len);
void load_flags(lavit_model* m, int64_t adam_t, int64_t last_step, bool vq_on, bool frozen);

void state_load(lavit_model* m, const uint8_t* data, int64_t len) {
  if (m->in_flight()) throw std::logic_error("cannot load while a step is in flight");
  if (!data || len < 12) throw std::invalid_argument("state is empty or truncated");
  const size_t n = static_cast<size_t>(len);
  if (std::memcmp(data, kMagic, 8) != 0) throw std::invalid_argument("not a lavit state (bad magic)");
  uint32_t format;
  std::memcpy(&format, data + 8, 4);
  if (format == kStateFormatBlocked) return state_load_blocked(m, data, len);
  uint32_t sum;
  std::memcpy(&sum, data + n - 4, 4);
  if (fnv1a(data, n - 4) != sum) throw std::invalid_argument("state checksum mismatch (truncated or corrupt)");
  Reader r{data, n - 4, 8};
  if (r.get<uint32_t>("format") != LAVIT_STATE_FORMAT) throw std::invalid_argument("state written in another format version");
  if (static_cast<int>(r.get<uint32_t>("stage")) != m->stage) throw std::invalid_argument("state is for another stage");
  auto adam_t = static_cast<int64_t>(r.get<uint64_t>("adam_t"));
  auto last_step = static_cast<int64_t>(r.get<uint64_t>("step"));
  bool vq_on = r.get<uint8_t>("vq") != 0, frozen = r.get<uint8_t>("frozen") != 0;
  auto targets = state_numels(m);
  auto count = r.get<uint32_t>("tensor count");
  if (count != targets.size()) throw std::invalid_argument("state has " + std::to_string(count) + " tensors, model " + std::to_string(targets.size()));
  // Parse everything into temporaries first: nothing changes unless all is well.
  std::vector<torch::Tensor> loaded;
  for (auto& [name, want] : targets) {
    auto nl = r.get<uint32_t>("name length");
    if (nl > 256 || r.off + nl > r.n) throw std::invalid_argument("state is truncated (tensor name)");
    std::string got(reinterpret_cast<const char*>(data + r.off), nl);
    r.off += nl;
    if (got != name) throw std::invalid_argument("state tensor \"" + got + "\" where \"" + name + "\" was expected");
    auto numel = r.get<uint64_t>("numel");
    if (static_cast<int64_t>(numel) != want) {
      throw std::invalid_argument("state tensor " + name + " has " + std::to_string(numel) + " values, model needs " +
                                  std::to_string(want));
    }
    if (r.off + numel * sizeof(float) > r.n) throw std::invalid_argument("state is truncated (" + name + " data)");
    auto cpu = torch::empty({static_cast<int64_t>(numel)}, torch::kFloat);
    std::memcpy(cpu.data_ptr<float>(), data + r.off, numel * sizeof(float));
    r.off += numel * sizeof(float);
    loaded.push_back(cpu);
  }
  if (r.off != r.n) throw std::invalid_argument("state has trailing bytes");
  torch::NoGradGuard no_grad;
  // Whole tensors go where they live; moments keep this rank's shard.
  const int64_t P = m->trainable;
  ensure_optim(m);
  m->params.narrow(0, 0, P).copy_(loaded[0]);
  // This rank's shard of the flat float32 tensors (the master weights
  // from the saved values, not from the parameters: in bf16 those are
  // rounded).
  const int64_t mine = std::min(m->shard_lo + m->shard_n, P) - m->shard_lo;
  for (int i : {0, 1, 2}) {
    auto& dst = i == 0 ? m->master : i == 1 ? m->exp_avg : m->exp_avg_sq;
    if (!dst.defined()) continue;
    dst.zero_();
    if (mine > 0) dst.narrow(0, 0, mine).copy_(loaded[i].narrow(0, m->shard_lo, mine));
  }
  if (m->stage == 1) m->tok->codebook.copy_(loaded[3].view(m->tok->codebook.sizes()));
  load_flags(m, adam_t, last_step, vq_on, frozen);
}

// load_flags sets what a state says besides its tensors.
void load_flags(lavit_model* m, int64_t adam_t, int64_t last_step, bool vq_on, bool frozen) {
  m->gathered = torch::Tensor();
  m->adam_t = adam_t;
  m->last_step = last_step;
  m->vq_on = vq_on;
  m->selector_frozen = frozen;
  if (frozen) {
    m->frozen_groups.insert("selector");
  } else {
    m->frozen_groups.erase("selector");
  }
  m->finished = false;
}

// state_load_blocked loads a blocked state (format 2) written at any world
// size: the parameters whole, this rank's shard of the master weights and
// moments. Every checksum and length is checked before anything changes.
void state_load_blocked(lavit_model* m, const uint8_t* data, int64_t len) {
  Reader r{data, static_cast<size_t>(len), 12};
  if (static_cast<int>(r.get<uint32_t>("stage")) != m->stage) throw std::invalid_argument("state is for another stage");
  auto adam_t = static_cast<int64_t>(r.get<uint64_t>("adam_t"));
  auto last_step = static_cast<int64_t>(r.get<uint64_t>("step"));
  bool vq_on = r.get<uint8_t>("vq") != 0, frozen = r.get<uint8_t>("frozen") != 0;
  const int64_t P = static_cast<int64_t>(r.get<uint64_t>("parameter count"));
  const int64_t block = static_cast<int64_t>(r.get<uint64_t>("block"));
  const int64_t blocks = r.get<uint32_t>("blocks");
  const int64_t cb = static_cast<int64_t>(r.get<uint64_t>("codebook numel"));
  if (P != m->trainable) {
    throw std::invalid_argument("state has " + std::to_string(P) + " parameters, the model " + std::to_string(m->trainable));
  }
  // The header's sizes are untrusted: every product below is checked
  // before it is formed (block · blocks, and so b · block for b < blocks;
  // 12 · nb and 4 · cb against the bytes left), and blocks against the
  // bytes left before it sizes the starts vector; nothing changes before
  // every check has passed.
  if (blocks < 1 || block < 1) throw std::invalid_argument("state blocks: " + std::to_string(blocks) + " blocks of " + std::to_string(block) + " values");
  if (block > INT64_MAX / blocks) {
    throw std::invalid_argument("state blocks: " + std::to_string(blocks) + " blocks of " + std::to_string(block) + " values overflow");
  }
  if (block * blocks < P) throw std::invalid_argument("state blocks do not cover its parameters");
  if (static_cast<uint64_t>(blocks) > (r.n - r.off) / 16) {
    throw std::invalid_argument("state block count " + std::to_string(blocks) + " exceeds what the " + std::to_string(r.n - r.off) + " bytes left can hold");
  }
  const int64_t want_cb = m->stage == 1 ? m->tok->codebook.numel() : 0;
  if (cb != want_cb) throw std::invalid_argument("state codebook has " + std::to_string(cb) + " values, the model " + std::to_string(want_cb));
  if (static_cast<uint64_t>(cb) > (r.n - r.off) / 4 || r.off + 4 * cb + 4 > r.n) throw std::invalid_argument("state is truncated (codebook)");
  const uint8_t* cb_data = data + r.off;
  r.off += 4 * cb;
  if (crc32c(data, r.off) != r.get<uint32_t>("header checksum")) throw std::invalid_argument("state header checksum mismatch (corrupt)");
  std::vector<const uint8_t*> starts(blocks);
  for (int64_t b = 0; b < blocks; ++b) {
    const size_t at = r.off;
    if (r.get<uint32_t>("block index") != static_cast<uint32_t>(b)) throw std::invalid_argument("state block " + std::to_string(b) + " is out of order");
    const int64_t nb = static_cast<int64_t>(r.get<uint64_t>("block length"));
    if (nb != block_values(P, block, b)) throw std::invalid_argument("state block " + std::to_string(b) + " has a wrong length");
    if (static_cast<uint64_t>(nb) > (r.n - r.off) / 12 || r.off + 12 * nb + 4 > r.n) {
      throw std::invalid_argument("state is truncated (block " + std::to_string(b) + ")");
    }
    starts[b] = data + r.off;
    r.off += 12 * nb;
    if (crc32c(data + at, r.off - at) != r.get<uint32_t>("block checksum")) {
      throw std::invalid_argument("state block " + std::to_string(b) + " checksum mismatch (corrupt)");
    }
  }
  if (r.off != r.n) throw std::invalid_argument("state has trailing bytes");
  torch::NoGradGuard no_grad;
  ensure_optim(m);
  for (auto* t : {&m->master, &m->exp_avg, &m->exp_avg_sq}) {
    if (t->defined()) t->zero_();
  }
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t nb = block_values(P, block, b), from = b * block;
    if (nb == 0) continue;
    auto values = [&](int which) {
      return torch::from_blob(const_cast<uint8_t*>(starts[b]) + 4 * nb * which, {nb}, torch::kFloat);
    };
    m->params.narrow(0, from, nb).copy_(values(0));
    // This rank's shard of the master weights and moments.
    const int64_t lo = std::max(from, m->shard_lo), hi = std::min(from + nb, m->shard_lo + m->shard_n);
    if (lo >= hi) continue;
    for (int which : {0, 1, 2}) {
      auto& dst = which == 0 ? m->master : which == 1 ? m->exp_avg : m->exp_avg_sq;
      if (dst.defined()) dst.narrow(0, lo - m->shard_lo, hi - lo).copy_(values(which).narrow(0, lo - from, hi - lo));
    }
  }
  if (m->stage == 1) {
    m->tok->codebook.copy_(torch::from_blob(const_cast<uint8_t*>(cb_data), {cb}, torch::kFloat).view(m->tok->codebook.sizes()));
  }
  load_flags(m, adam_t, last_step, vq_on, frozen);
}

// ---- safetensors -------------------------------------------------------------

// MappedFile maps a file read-only for its lifetime.
struct MappedFile {
  const uint8_t* data = nullptr;
  size_t size = 0;
  explicit MappedFile(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) throw std::runtime_error("open " + path + ": " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      ::close(fd);
      throw std::runtime_error("stat " + path + ": " + std::strerror(errno));
    }
    size = static_cast<size_t>(st.st_size);
    if (size > 0) {
      void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
      ::close(fd);
      if (p == MAP_FAILED) throw std::runtime_error("mmap " + path + ": " + std::strerror(errno));
      data = static_cast<const uint8_t*>(p);
    } else {
      ::close(fd);
    }
  }
  ~MappedFile() {
    if (data) ::munmap(const_cast<uint8_t*>(data), size);
  }
};

float half_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal
      float f = std::ldexp(static_cast<float>(mant), -24);
      return (h & 0x8000u) ? -f : f;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

void load_safetensors(lavit_model* m, const std::string& path, const std::string& prefix, const json& mapping) {
  if (m->in_flight()) throw std::logic_error("cannot load weights while a step is in flight");
  MappedFile file(path);
  if (file.size < 8) throw std::invalid_argument(path + ": not a safetensors file (too short)");
  uint64_t hlen;
  std::memcpy(&hlen, file.data, 8);
  if (hlen > file.size - 8 || hlen > (100u << 20)) throw std::invalid_argument(path + ": bad safetensors header length");
  json header = json::parse(file.data + 8, file.data + 8 + hlen);
  const uint8_t* base = file.data + 8 + hlen;
  const size_t data_size = file.size - 8 - hlen;
  // Validate everything first; copy only if all of it is right.
  struct Target {
    std::string name;
    std::vector<int64_t> shape;
    int64_t numel;
    torch::Tensor dst;  // where the values go (a flat-buffer slice or a frozen parameter)
  };
  std::vector<Target> targets;
  for (auto& seg : m->segs) targets.push_back({seg.name, seg.shape, seg.numel, m->params.narrow(0, seg.offset, seg.numel)});
  for (auto& [name, p] : m->frozen) targets.push_back({name, p.sizes().vec(), p.numel(), p});
  std::vector<std::pair<Target*, torch::Tensor>> loads;
  for (auto& seg : targets) {
    if (seg.name.rfind(prefix, 0) != 0) continue;
    std::string fname = seg.name;
    if (mapping.is_object() && mapping.contains(seg.name)) fname = mapping[seg.name].get<std::string>();
    if (!header.contains(fname)) throw std::invalid_argument(path + ": missing tensor \"" + fname + "\"");
    const auto& e = header[fname];
    auto shape = e.at("shape").get<std::vector<int64_t>>();
    if (shape != seg.shape) {
      throw std::invalid_argument(path + ": tensor \"" + fname + "\" has shape " + json(shape).dump() +
                                  ", the model needs " + json(seg.shape).dump());
    }
    auto dtype = e.at("dtype").get<std::string>();
    auto offs = e.at("data_offsets").get<std::vector<uint64_t>>();
    size_t elem = dtype == "F32" ? 4 : (dtype == "F16" || dtype == "BF16") ? 2 : 0;
    if (elem == 0) throw std::invalid_argument(path + ": tensor \"" + fname + "\" has unsupported dtype " + dtype);
    if (offs.size() != 2 || offs[1] < offs[0] || offs[1] > data_size || offs[1] - offs[0] != seg.numel * elem) {
      throw std::invalid_argument(path + ": tensor \"" + fname + "\" has bad data offsets");
    }
    auto t = torch::empty({seg.numel}, torch::kFloat);
    float* dst = t.data_ptr<float>();
    const uint8_t* src = base + offs[0];
    if (dtype == "F32") {
      std::memcpy(dst, src, seg.numel * 4);
    } else {
      for (int64_t i = 0; i < seg.numel; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        if (dtype == "BF16") {
          uint32_t bits = static_cast<uint32_t>(h) << 16;
          std::memcpy(dst + i, &bits, 4);
        } else {
          dst[i] = half_to_float(h);
        }
      }
    }
    if (!torch::isfinite(t).all().item<bool>()) throw std::invalid_argument(path + ": tensor \"" + fname + "\" contains NaN or Inf");
    loads.emplace_back(&seg, t);
  }
  if (loads.empty()) throw std::invalid_argument("no model parameter matches prefix \"" + prefix + "\"");
  torch::NoGradGuard no_grad;
  for (auto& [seg, t] : loads) seg->dst.copy_(t.to(m->device).view(seg->dst.sizes()));
  sync_master(m);
}

json model_info(lavit_model* m) {
  json info = json::object();
  info["stage"] = m->stage;
  info["device"] = m->device.str();
  int64_t trainable = 0;
  json ps = json::array();
  for (auto& s : m->segs) {
    ps.push_back({{"name", s.name}, {"shape", s.shape}, {"offset", s.offset}, {"numel", s.numel}, {"group", s.group}});
    trainable += s.numel;
  }
  info["params"] = ps;
  json fr = json::array();
  int64_t frozen_count = 0;
  for (auto& [name, p] : m->frozen) {
    fr.push_back({{"name", name}, {"shape", p.sizes().vec()}, {"numel", p.numel()}});
    frozen_count += p.numel();
  }
  info["frozen"] = fr;
  info["frozen_count"] = frozen_count;
  info["param_count"] = trainable;
  info["grad_numel"] = m->grads.numel();
  info["grad_words"] = words(comm_grads(m));
  info["param_words"] = words(m->params);
  info["gather_parts"] = gather_parts(m);
  info["precision"] = is_bf16(m) ? "bf16" : "fp32";
  if (m->buckets.bytes > 0 && m->buckets.list.empty()) plan_buckets(m);
  json bl = json::array();
  for (const auto& b : m->buckets.list) bl.push_back({b.words_lo, b.words});
  info["buckets"] = bl;
  info["reduce_dtype"] = is_bf16(m) && m->reduce_bf16 ? "bf16" : "fp32";
  info["pre_stats"] = pre_stats_numel(m);
  info["post_stats"] = post_stats_numel(m);
  info["vq_on"] = m->vq_on;
  info["selector_frozen"] = m->selector_frozen;
  info["adam_t"] = m->adam_t;
  // Sharding and what the buffers hold on the device, in bytes (the
  // optimizer's only once allocated, at the first step or state load).
  info["zero"] = m->zero;
  info["rank"] = m->rank;
  info["world"] = m->world;
  info["shard_offset"] = m->shard_lo;
  info["shard_numel"] = m->shard_n;
  auto bytes = [](const torch::Tensor& t) -> int64_t { return t.defined() ? t.numel() * t.element_size() : 0; };
  info["param_bytes"] = bytes(m->params);
  info["grad_bytes"] = bytes(m->grads) + bytes(m->reduced);
  info["optim_bytes"] = bytes(m->exp_avg) + bytes(m->exp_avg_sq) + bytes(m->master);
  int64_t frozen_bytes = 0;
  for (auto& [name, p] : m->frozen) frozen_bytes += bytes(p);
  info["frozen_bytes"] = frozen_bytes;
  if (m->stage == 1) {
    const auto& c = m->tok->cfg;
    info["patches"] = c.patches();
    info["width"] = c.width;
    info["code_dim"] = c.code_dim;
    info["codebook"] = c.codebook;
    info["image"] = c.image;
    info["channels"] = c.channels;
  } else {
    info["vocab"] = m->lm->cfg.vocab;
    info["max_len"] = m->lm->cfg.max_len;
    info["d_model"] = m->lm->cfg.d_model;
    info["image_input"] = m->lm->cfg.image_input;
    info["vis_patches"] = m->lm->cfg.vis_patches;
    info["vis_width"] = m->lm->cfg.vis_width;
  }
  return info;
}

char* dup_string(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out) std::memcpy(out, s.c_str(), s.size() + 1);
  return out;
}

// local_steps runs n full steps (begin, finish, apply) on one batch with
// no reduction: the C++-side timing and profiling loops.
void local_steps(lavit_model* m, const lavit_batch* b, int64_t n) {
  std::vector<float> pre(pre_stats_numel(m)), post(post_stats_numel(m));
  for (int64_t i = 0; i < n; ++i) {
    step_begin(m, b, pre.data());
    step_finish(m, pre.data(), post.data());
    step_apply(m, b->global_batch, post.data(), -1);
  }
}

// guard runs fn and turns any exception into an error return.
template <typename Fn>
int guard(Fn&& fn) {
  try {
    fn();
    return 0;
  } catch (const c10::Error& e) {
    g_error = e.what_without_backtrace();
  } catch (const std::exception& e) {
    g_error = e.what();
  } catch (...) {
    g_error = "unknown C++ exception";
  }
  return -1;
}

}  // namespace

extern "C" {

int lavit_abi_version(void) { return LAVIT_ABI_VERSION; }

const char* lavit_last_error(void) { return g_error.c_str(); }

char* lavit_build_info(void) {
  char* out = nullptr;
  guard([&] {
    json j = {{"torch", TORCH_VERSION}, {"cuda", torch::cuda::is_available()}, {"threads", torch::get_num_threads()},
              {"abi", LAVIT_ABI_VERSION}, {"deterministic", at::globalContext().deterministicAlgorithms()}};
    out = dup_string(j.dump());
  });
  return out;
}

void lavit_free_string(char* s) { std::free(s); }

int lavit_set_threads(int n) {
  return guard([&] {
    if (n < 1) throw std::invalid_argument("threads must be at least 1");
    torch::set_num_threads(n);
  });
}

int lavit_set_deterministic(int on) {
  return guard([&] {
    if (on) setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", 0);
    at::globalContext().setDeterministicAlgorithms(on != 0, false);
    at::globalContext().setDeterministicCuDNN(on != 0);
    if (on) at::globalContext().setBenchmarkCuDNN(false);
  });
}

lavit_model* lavit_model_create(const char* config_json, const char* device, uint64_t seed) {
  lavit_model* out = nullptr;
  guard([&] { out = create(config_json, device, seed); });
  return out;
}

void lavit_model_free(lavit_model* m) { delete m; }

char* lavit_model_info(lavit_model* m) {
  char* out = nullptr;
  guard([&] { out = dup_string(model_info(m).dump()); });
  return out;
}

int64_t lavit_grad_numel(lavit_model* m) { return words(comm_grads(m)); }
int lavit_sync(lavit_model* m) {
  return guard([&] {
    if (m->device.is_cuda()) torch::cuda::synchronize(m->device.index());
  });
}
// staging_words is the host staging buffer's size in float32 words: room
// for the collective's gradient buffer and for the parameters.
int64_t staging_words(lavit_model* m) { return std::max(words(comm_grads(m)), words(m->params)); }

// stage copies `dev` (a flat buffer) into the staging buffer (to_host) or
// back, the staging bytes read as dev's dtype.
void stage(lavit_model* m, torch::Tensor& dev, bool to_host, const char* what) {
  if (!m->staging.defined() || m->staging.numel() != staging_words(m)) {
    throw std::logic_error(std::string(what) + " stage: no staging buffer (call lavit_grad_staging first)");
  }
  torch::NoGradGuard no_grad;
  auto host = torch::from_blob(m->staging.data_ptr(), {dev.numel()}, torch::TensorOptions().dtype(dev.scalar_type()));
  if (to_host) {
    host.copy_(dev);
  } else {
    dev.copy_(host);
  }
}

float* lavit_grad_staging(lavit_model* m) {
  float* out = nullptr;
  guard([&] {
    if (!m->staging.defined() || m->staging.numel() != staging_words(m)) {
      auto opts = torch::TensorOptions().dtype(torch::kFloat).device(torch::kCPU);
      if (m->device.is_cuda()) opts = opts.pinned_memory(true);
      m->staging = torch::empty({staging_words(m)}, opts);
    }
    out = m->staging.data_ptr<float>();
  });
  return out;
}
int lavit_grads_stage(lavit_model* m, int to_host) {
  return guard([&] { stage(m, comm_grads(m), to_host != 0, "grads"); });
}
void* lavit_grad_data(lavit_model* m) { return comm_grads(m).data_ptr(); }
void* lavit_param_data(lavit_model* m) { return m->params.data_ptr(); }
int lavit_param_grad(lavit_model* m, int64_t index, float* out) {
  return guard([&] {
    if (index < 0 || index >= static_cast<int64_t>(m->segs.size())) throw std::out_of_range("parameter index out of range");
    auto g = m->segs[index].param.grad();
    if (!g.defined()) throw std::runtime_error("parameter " + m->segs[index].name + " has no .grad");
    auto c = g.detach().to(torch::kCPU, torch::kFloat).contiguous().reshape({-1});
    std::memcpy(out, c.data_ptr<float>(), c.numel() * sizeof(float));
  });
}

int64_t lavit_pre_stats_numel(lavit_model* m) { return pre_stats_numel(m); }
int64_t lavit_post_stats_numel(lavit_model* m) { return post_stats_numel(m); }

int lavit_step_begin(lavit_model* m, const lavit_batch* b, float* pre_stats) {
  return guard([&] {
    try {
      step_begin(m, b, pre_stats);
    } catch (...) {
      // A failed micro-batch drops the whole step in flight.
      m->pending.clear();
      m->finished = false;
      throw;
    }
  });
}

int lavit_step_finish(lavit_model* m, const float* global_pre_stats, float* post_stats, double* local_loss_sum) {
  return guard([&] {
    try {
      double v = step_finish(m, global_pre_stats, post_stats);
      if (local_loss_sum) *local_loss_sum = v;
    } catch (const std::exception& e) {
      fail_buckets(m, e.what());
      throw;
    } catch (...) {
      fail_buckets(m, "unknown error");
      throw;
    }
  });
}

int lavit_set_buckets(lavit_model* m, int64_t bytes) {
  return guard([&] {
    if (bytes < 0) throw std::invalid_argument("bucket bytes must not be negative");
    check_fresh(m, "buckets");
    m->buckets.bytes = bytes;
    plan_buckets(m);
  });
}

int lavit_arm_buckets(lavit_model* m) {
  return guard([&] { arm_buckets(m); });
}

int lavit_wait_bucket(lavit_model* m, int64_t k) {
  return guard([&] { wait_bucket(m, k); });
}

int lavit_step_apply(lavit_model* m, int64_t global_batch, const float* global_post_stats, double grad_sq) {
  return guard([&] { step_apply(m, global_batch, global_post_stats, grad_sq); });
}

int lavit_set_shard(lavit_model* m, int64_t rank, int64_t world, int zero) {
  return guard([&] { set_shard(m, rank, world, zero); });
}

int lavit_set_checkpointing(lavit_model* m, int on) {
  return guard([&] {
    if (m->stage == 1) {
      m->tok->checkpoint_blocks = on != 0;
    } else {
      m->lm->checkpoint_blocks = on != 0;
      if (m->lm->vis) m->lm->vis->checkpoint_blocks = on != 0;
    }
  });
}

int lavit_grad_sq(lavit_model* m, float* hi, float* lo) {
  return guard([&] {
    if (!hi || !lo) throw std::invalid_argument("grad_sq: an output is NULL");
    std::tie(*hi, *lo) = as_float_pair(block_grad_sq(m, m->rank));
  });
}

int lavit_params_stage(lavit_model* m, int to_host) {
  return guard([&] { stage(m, m->params, to_host != 0, "params"); });
}

int lavit_set_precision(lavit_model* m, int bf16, int reduce_bf16) {
  return guard([&] { set_precision(m, bf16 != 0, reduce_bf16 != 0); });
}

float* lavit_optim_gather(lavit_model* m) {
  float* out = nullptr;
  guard([&] {
    if (m->in_flight() || m->finished) throw std::logic_error("optim gather: a step is in flight");
    ensure_optim(m);
    const int64_t n = m->params.numel(), k = gather_parts(m);
    auto g = torch::zeros({k * n}, torch::TensorOptions().dtype(torch::kFloat));
    std::vector<torch::Tensor> parts = {m->exp_avg, m->exp_avg_sq};
    if (is_bf16(m)) parts.insert(parts.begin(), m->master);
    for (int64_t i = 0; i < k; ++i) g.narrow(0, i * n + m->shard_lo, m->shard_n).copy_(parts[i]);
    m->gathered = g;
    out = g.data_ptr<float>();
  });
  return out;
}

char* lavit_last_metrics(lavit_model* m) {
  char* out = nullptr;
  guard([&] { out = dup_string(m->metrics.dump()); });
  return out;
}

int lavit_vq_enable(lavit_model* m, const float* images, int64_t n, const int64_t* positions, int64_t step) {
  return guard([&] { vq_enable(m, images, n, positions, step); });
}

int lavit_load_safetensors(lavit_model* m, const char* path, const char* prefix, const char* mapping_json) {
  return guard([&] {
    if (!path) throw std::invalid_argument("path is NULL");
    json mapping = mapping_json && *mapping_json ? json::parse(mapping_json) : json();
    load_safetensors(m, path, prefix ? prefix : "", mapping);
  });
}

int lavit_state_save(lavit_model* m, uint8_t** out, int64_t* out_len) {
  return guard([&] {
    auto bytes = state_save(m);
    auto* p = static_cast<uint8_t*>(std::malloc(bytes.size()));
    if (!p) throw std::bad_alloc();
    std::memcpy(p, bytes.data(), bytes.size());
    *out = p;
    *out_len = static_cast<int64_t>(bytes.size());
  });
}

void lavit_free_bytes(uint8_t* p) { std::free(p); }

int lavit_state_part(lavit_model* m, uint8_t** out, int64_t* out_len) {
  return guard([&] {
    if (!out || !out_len) throw std::invalid_argument("state part: an output is NULL");
    std::tie(*out, *out_len) = state_part(m);
  });
}

int lavit_state_load(lavit_model* m, const uint8_t* data, int64_t len) {
  return guard([&] { state_load(m, data, len); });
}

int lavit_eval_stage1(lavit_model* m, const float* images, int64_t n, const int64_t* positions, int64_t step,
                      float* cos_loss, float* keep_prob, uint8_t* keep, int64_t* codes, float* features) {
  return guard([&] {
    if (m->stage != 1) throw std::logic_error("eval_stage1 needs a stage-1 model");
    torch::NoGradGuard no_grad;
    auto imgs = images_tensor(m, images, n);
    auto sel = m->tok->select(imgs, positions_vec(positions, n), step, m->seed, kSaltEval);
    auto z = m->tok->merge(sel);
    torch::Tensor zq = z, idx = torch::full({n, m->patches()}, -1, torch::kLong);
    if (m->vq_on) {
      idx = m->tok->nearest(z);
      zq = m->tok->codebook.index_select(0, idx.view(-1)).view(z.sizes()).to(z.scalar_type());
    }
    auto copy = [](const torch::Tensor& t, void* dst, size_t elem) {
      auto c = t.to(torch::kCPU).contiguous();
      std::memcpy(dst, c.data_ptr(), c.numel() * elem);
    };
    if (cos_loss) {  // the decoder runs only when the reconstruction is asked for
      auto xhat = m->tok->decode(zq, sel.keep_hard, sel.keep_hard);
      auto cos = F::cosine_similarity(xhat.to(torch::kFloat), sel.feats.to(torch::kFloat),
                                      F::CosineSimilarityFuncOptions().dim(-1));
      copy(1.0 - cos, cos_loss, sizeof(float));
    }
    if (keep_prob) copy(sel.logp.select(-1, 0).exp().to(torch::kFloat), keep_prob, sizeof(float));
    if (keep) copy(sel.keep_hard.to(torch::kUInt8), keep, 1);
    if (codes) copy(idx.to(torch::kLong), codes, sizeof(int64_t));
    if (features) copy(sel.feats.to(torch::kFloat), features, sizeof(float));
  });
}

int lavit_tokenize(lavit_model* m, const float* images, int64_t n, const int64_t* positions, int64_t step,
                   int64_t* ids, int64_t* counts) {
  return guard([&] {
    if (m->stage != 1) throw std::logic_error("tokenize needs a stage-1 model");
    if (!m->vq_on) throw std::logic_error("tokenize needs a trained tokenizer with VQ on (phase B)");
    torch::NoGradGuard no_grad;
    auto imgs = images_tensor(m, images, n);
    auto sel = m->tok->select(imgs, positions_vec(positions, n), step, m->seed, kSaltEval);
    auto idx = m->tok->nearest(m->tok->merge(sel)).to(torch::kCPU);
    auto kh = sel.keep_hard.to(torch::kCPU, torch::kFloat);
    const int64_t N = m->patches();
    auto ia = idx.accessor<int64_t, 2>();
    auto ka = kh.accessor<float, 2>();
    for (int64_t i = 0; i < n; ++i) {
      int64_t c = 0;
      for (int64_t j = 0; j < N; ++j) {
        if (ka[i][j] > 0.5f) ids[i * N + c++] = ia[i][j];
      }
      for (int64_t j = c; j < N; ++j) ids[i * N + j] = -1;
      counts[i] = c;
    }
  });
}

int lavit_lm_logprobs(lavit_model* m, const lavit_batch* b, float* out) {
  return guard([&] {
    if (m->stage != 2) throw std::logic_error("lm_logprobs needs a stage-2 model");
    if (!b || !out || b->batch <= 0) throw std::invalid_argument("batch or out is NULL");
    torch::NoGradGuard no_grad;
    auto in = lm_inputs(m, b, false);
    auto logits = m->lm->forward(in.tokens, in.feats, in.keep, in.slots).to(torch::kFloat);
    auto lp = torch::log_softmax(logits, -1).to(torch::kCPU).contiguous();
    std::memcpy(out, lp.data_ptr<float>(), lp.numel() * sizeof(float));
  });
}

int lavit_profile_steps(lavit_model* m, const lavit_batch* b, int64_t n, const char* trace_path) {
  return guard([&] {
    if (!trace_path || !*trace_path) throw std::invalid_argument("trace path is empty");
    if (n < 1) throw std::invalid_argument("profile at least one step");
    local_steps(m, b, 1);
    std::ofstream out(trace_path);
    if (!out) throw std::runtime_error(std::string("open ") + trace_path + ": " + std::strerror(errno));
    {
      torch::autograd::profiler::RecordProfile profile(out);
      local_steps(m, b, n);
      if (m->device.is_cuda()) torch::cuda::synchronize(m->device.index());
    }
    out.close();
    if (!out) throw std::runtime_error(std::string("write ") + trace_path + ": " + std::strerror(errno));
  });
}

int lavit_bench_steps(lavit_model* m, const lavit_batch* b, int64_t n, double* ms_per_step) {
  return guard([&] {
    auto t0 = std::chrono::steady_clock::now();
    local_steps(m, b, n);
    if (m->device.is_cuda()) torch::cuda::synchronize(m->device.index());  // time the kernels, not their queueing
    auto dt = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    *ms_per_step = dt / static_cast<double>(std::max<int64_t>(n, 1));
  });
}

}  // extern "C"
