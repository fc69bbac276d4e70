// models.cpp: the LaVIT modules. Shapes: B batch, N patches, D width,
// C code dim, K codebook size, T sequence length, V vocabulary.
#include "models.h"

#include <cmath>

namespace F = torch::nn::functional;

namespace lavit {

namespace {
constexpr double kPolicyEps = 1e-6;

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}
}  // namespace

uint64_t sample_key(uint64_t seed, uint64_t salt, int64_t step, int64_t position) {
  uint64_t h = splitmix64(seed);
  h = splitmix64(h ^ salt);
  h = splitmix64(h ^ static_cast<uint64_t>(step));
  h = splitmix64(h ^ static_cast<uint64_t>(position));
  return h;
}

torch::Tensor policy_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& weight, bool hard) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  auto s = torch::matmul(q, k.transpose(-2, -1)) * scale;
  if (!weight.defined()) {
    return torch::matmul(torch::softmax(s, -1), v);
  }
  if (hard) {
    return torch::matmul(torch::softmax(s.masked_fill(weight == 0, -INFINITY), -1), v);
  }
  s = s - std::get<0>(s.max(-1, true)).detach();
  auto e = s.exp() * weight;
  const double nk = static_cast<double>(k.size(-2));
  auto attn = (e + kPolicyEps / nk) / (e.sum(-1, true) + kPolicyEps);
  return torch::matmul(attn, v);
}

namespace {
// FnHolder carries a block's function from the forward pass to backward
// (autograd's context keeps IValues; a capsule holds any C++ object).
struct FnHolder : torch::CustomClassHolder {
  explicit FnHolder(BlockFn f) : fn(std::move(f)) {}
  BlockFn fn;
};

// Checkpoint is the autograd function behind checkpointed: forward keeps
// only the inputs; backward recomputes the block with a graph and
// back-propagates through it.
struct Checkpoint : torch::autograd::Function<Checkpoint> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, c10::intrusive_ptr<FnHolder> holder,
                               at::TensorList inputs) {
    // Function::apply runs this with autograd off: no graph is kept.
    ctx->save_for_backward(inputs.vec());
    auto out = holder->fn(inputs.vec());
    ctx->saved_data["fn"] = c10::IValue::make_capsule(std::move(holder));
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    auto holder = c10::static_intrusive_pointer_cast<FnHolder>(ctx->saved_data["fn"].toCapsule());
    std::vector<torch::Tensor> inputs;
    for (const auto& x : saved) {
      inputs.push_back(x.defined() ? x.detach().requires_grad_(x.requires_grad()) : x);
    }
    torch::Tensor out;
    {
      torch::AutoGradMode enable(true);
      out = holder->fn(inputs);
    }
    // Gradients flow into the block's parameters (accumulated into their
    // .grad, the flat buffer) and into the detached inputs.
    torch::autograd::backward({out}, {grad_out[0]});
    torch::autograd::variable_list grads{torch::Tensor()};  // none for the function
    for (const auto& x : inputs) grads.push_back(x.defined() && x.requires_grad() ? x.grad() : torch::Tensor());
    return grads;
  }
};
}  // namespace

torch::Tensor checkpointed(const BlockFn& fn, const std::vector<torch::Tensor>& inputs) {
  if (!torch::GradMode::is_enabled()) return fn(inputs);
  return Checkpoint::apply(c10::make_intrusive<FnHolder>(fn), at::TensorList(inputs));
}

// causal_attention is the LM's attention over a causal mask ([T,T], 1 =
// may attend): PyTorch's fused scaled-dot-product attention where the
// libtorch has it (2.x: flash or memory-efficient kernels, no T×T
// probabilities saved for backward), the explicit masked softmax on 1.13.
torch::Tensor causal_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& mask) {
#if TORCH_VERSION_MAJOR >= 2
  (void)mask;  // exactly the causal triangle: the kernels make it themselves
  return at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0, /*is_causal=*/true);
#else
  return policy_attention(q, k, v, mask, /*hard=*/true);
#endif
}

MHAImpl::MHAImpl(int64_t dim_, int64_t heads_) : heads(heads_), dim(dim_) {
  TORCH_CHECK(dim % heads == 0, "width ", dim, " is not divisible by heads ", heads);
  q = register_module("q", torch::nn::Linear(dim, dim));
  k = register_module("k", torch::nn::Linear(dim, dim));
  v = register_module("v", torch::nn::Linear(dim, dim));
  o = register_module("o", torch::nn::Linear(dim, dim));
}

torch::Tensor MHAImpl::forward(const torch::Tensor& xq, const torch::Tensor& xkv, const torch::Tensor& weight,
                               bool hard) {
  const auto B = xq.size(0), Nq = xq.size(1), Nk = xkv.size(1), dh = dim / heads;
  auto split = [&](const torch::Tensor& t, int64_t n) { return t.view({B, n, heads, dh}).transpose(1, 2); };
  auto out = policy_attention(split(q(xq), Nq), split(k(xkv), Nk), split(v(xkv), Nk), weight, hard);
  return o(out.transpose(1, 2).reshape({B, Nq, dim}));
}

MLPImpl::MLPImpl(int64_t dim, int64_t hidden) {
  fc1 = register_module("fc1", torch::nn::Linear(dim, hidden));
  fc2 = register_module("fc2", torch::nn::Linear(hidden, dim));
}

torch::Tensor MLPImpl::forward(const torch::Tensor& x) { return fc2(torch::gelu(fc1(x))); }

SelectorImpl::SelectorImpl(int64_t dim) {
  TORCH_CHECK(dim % 4 == 0, "selector width ", dim, " must be divisible by 4");
  ln = register_module("ln", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})));
  in = register_module("in", torch::nn::Linear(dim, dim));
  h1 = register_module("h1", torch::nn::Linear(dim, dim / 2));
  h2 = register_module("h2", torch::nn::Linear(dim / 2, dim / 4));
  out = register_module("out", torch::nn::Linear(dim / 4, 2));
}

torch::Tensor SelectorImpl::forward(const torch::Tensor& feats) {
  auto h = torch::gelu(in(ln(feats)));
  const auto half = h.size(-1) / 2;
  auto local = h.narrow(-1, 0, half);
  // Every patch counts as kept for the global half (single-stage selector).
  auto global = h.narrow(-1, half, half).mean(1, true).expand_as(local);
  auto x = torch::cat({local, global}, -1);
  x = torch::gelu(h1(x));
  x = torch::gelu(h2(x));
  return torch::log_softmax(out(x), -1);
}

CrossBlockImpl::CrossBlockImpl(int64_t dim, int64_t heads, int64_t hidden) {
  ln1 = register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})));
  ln2 = register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})));
  ln3 = register_module("ln3", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})));
  self_attn = register_module("self_attn", MHA(dim, heads));
  cross_attn = register_module("cross_attn", MHA(dim, heads));
  mlp = register_module("mlp", MLP(dim, hidden));
}

torch::Tensor CrossBlockImpl::forward(const torch::Tensor& x_in, const torch::Tensor& memory,
                                       const torch::Tensor& self_w, const torch::Tensor& cross_w) {
  auto h = ln1(x_in);
  auto x = x_in + self_attn(h, h, self_w);
  x = x + cross_attn(ln2(x), memory, cross_w);
  return x + mlp(ln3(x));
}

EVABlockImpl::EVABlockImpl(int64_t dim_, int64_t heads_, int64_t hidden) : heads(heads_), dim(dim_) {
  TORCH_CHECK(dim % heads == 0, "encoder width ", dim, " is not divisible by heads ", heads);
  norm1 = register_module("norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim}).eps(1e-6)));
  norm2 = register_module("norm2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim}).eps(1e-6)));
  qkv = register_module("qkv", torch::nn::Linear(torch::nn::LinearOptions(dim, 3 * dim).bias(false)));
  q_bias = register_parameter("q_bias", torch::zeros({dim}));
  v_bias = register_parameter("v_bias", torch::zeros({dim}));
  proj = register_module("proj", torch::nn::Linear(dim, dim));
  mlp = register_module("mlp", MLP(dim, hidden));
}

torch::Tensor EVABlockImpl::forward(const torch::Tensor& x_in) {
  const auto B = x_in.size(0), T = x_in.size(1), dh = dim / heads;
  auto bias = torch::cat({q_bias, torch::zeros_like(q_bias), v_bias});
  auto qkv_out = F::linear(norm1(x_in), qkv->weight, bias).view({B, T, 3, heads, dh}).permute({2, 0, 3, 1, 4});
  auto att = policy_attention(qkv_out[0], qkv_out[1], qkv_out[2], torch::Tensor());
  auto x = x_in + proj(att.transpose(1, 2).reshape({B, T, dim}));
  return x + mlp(norm2(x));
}

PatchEmbedImpl::PatchEmbedImpl(int64_t channels, int64_t dim, int64_t patch) {
  proj = register_module("proj", torch::nn::Conv2d(torch::nn::Conv2dOptions(channels, dim, patch).stride(patch)));
}

ViTImpl::ViTImpl(const TokenizerConfig& c) {
  const int64_t N = c.patches(), D = c.width;
  patch_embed = register_module("patch_embed", PatchEmbed(c.channels, D, c.patch));
  cls_token = register_parameter("cls_token", torch::zeros({1, 1, D}));
  pos_embed = register_parameter("pos_embed", torch::randn({1, N + 1, D}) * 0.02);
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.encoder_blocks; ++i) blocks->push_back(EVABlock(D, c.encoder_heads, c.encoder_mlp_hidden));
  // CLIP's image normalisation.
  mean = register_buffer("mean", torch::tensor({0.48145466, 0.4578275, 0.40821073}).view({1, 3, 1, 1}));
  std = register_buffer("std", torch::tensor({0.26862954, 0.26130258, 0.27577711}).view({1, 3, 1, 1}));
  for (auto& p : parameters()) p.set_requires_grad(false);
}

torch::Tensor ViTImpl::forward(const torch::Tensor& images) {
  auto x = patch_embed->proj((images - mean) / std).flatten(2).transpose(1, 2);  // [B,N,D]
  x = torch::cat({cls_token.expand({x.size(0), 1, x.size(2)}), x}, 1) + pos_embed;
  for (const auto& blk : *blocks) x = blk->as<EVABlock>()->forward(x);
  return x.narrow(1, 1, x.size(1) - 1);  // last block, before any final norm; CLS dropped
}

TokenizerImpl::TokenizerImpl(const TokenizerConfig& c, uint64_t seed) : cfg(c) {
  const int64_t N = c.patches(), D = c.width, P = c.patch_dim(), hidden = c.hidden();
  TORCH_CHECK(c.encoder == "standin" || c.encoder == "vit", "tokenizer.encoder must be standin or vit, got ", c.encoder);
  TORCH_CHECK(c.image % c.patch == 0, "image size ", c.image, " is not a multiple of patch ", c.patch);
  // The frozen encoder stand-in comes from its own generator so it does not
  // depend on the order modules are built in.
  auto gen = at::detail::createCPUGenerator(sample_key(seed, 0xE1C0DE, 0, 0));
  enc_proj = register_buffer("enc_proj", torch::randn({P, D}, gen) / std::sqrt(static_cast<double>(P)));
  enc_pos = register_buffer("enc_pos", torch::randn({N, D}, gen) * c.encoder_pos_scale);
  codebook = register_buffer("codebook", F::normalize(torch::randn({c.codebook, c.code_dim}, gen),
                                                      F::NormalizeFuncOptions().dim(-1)));
  // Masks, precomputed.
  const int64_t side = c.image / c.patch;
  auto idx = torch::arange(N, torch::kLong);
  auto row = torch::div(idx, side, "floor").to(torch::kFloat), col = (idx % side).to(torch::kFloat);
  auto d2 = (row.unsqueeze(1) - row.unsqueeze(0)).pow(2) + (col.unsqueeze(1) - col.unsqueeze(0)).pow(2);
  locality = register_buffer("locality", torch::exp(-c.decoder_locality_alpha * d2));
  causal_strict = register_buffer("causal_strict", torch::ones({N, N}).tril(-1));
  eye = register_buffer("eye", torch::eye(N));

  if (c.encoder == "vit") vit = register_module("encoder", ViT(c));
  selector = register_module("selector", Selector(D));
  memory_ln = register_module("memory_ln", torch::nn::LayerNorm(torch::nn::LayerNormOptions({D})));
  merger = register_module("merger", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.merger_blocks; ++i) merger->push_back(CrossBlock(D, c.heads, hidden));
  merger_ln = register_module("merger_ln", torch::nn::LayerNorm(torch::nn::LayerNormOptions({D})));
  task1 = register_module("task1", torch::nn::Linear(D, D));
  task2 = register_module("task2", torch::nn::Linear(D, c.code_dim));
  code_in = register_module("code_in", torch::nn::Linear(c.code_dim, D));
  rank_emb = register_parameter("rank_emb", torch::randn({N, D}) * 0.02);
  queries = register_parameter("queries", torch::randn({N, D}) * 0.02);
  decoder = register_module("decoder", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.decoder_blocks; ++i) decoder->push_back(CrossBlock(D, c.heads, hidden));
  decoder_ln = register_module("decoder_ln", torch::nn::LayerNorm(torch::nn::LayerNormOptions({D})));
  out1 = register_module("out1", torch::nn::Linear(D, D));
  out2 = register_module("out2", torch::nn::Linear(D, D));
}

torch::Tensor TokenizerImpl::encode(const torch::Tensor& images) {
  if (vit) return vit->forward(images);
  const int64_t B = images.size(0), p = cfg.patch, side = cfg.image / p;
  // [B,C,H,W] -> [B, side, side, C, p, p] -> [B, N, C*p*p]
  auto x = images.view({B, cfg.channels, side, p, side, p}).permute({0, 2, 4, 1, 3, 5}).reshape(
      {B, side * side, cfg.patch_dim()});
  auto h = torch::gelu(torch::matmul(x, enc_proj) + enc_pos);
  return F::layer_norm(h, F::LayerNormFuncOptions({cfg.width}));
}

SelectOut TokenizerImpl::select(const torch::Tensor& images, const std::vector<int64_t>& positions, int64_t step,
                                uint64_t seed, uint64_t salt) {
  SelectOut s;
  {
    torch::NoGradGuard no_grad;
    s.feats = encode(images);
  }
  s.logp = selector(s.feats);
  const int64_t B = images.size(0), N = cfg.patches();
  // Gumbel noise from a generator per sample, keyed by its global position.
  std::vector<torch::Tensor> noise;
  noise.reserve(B);
  for (int64_t i = 0; i < B; ++i) {
    auto gen = at::detail::createCPUGenerator(sample_key(seed, salt, step, positions[i]));
    auto u = torch::rand({N, 2}, gen).clamp(1e-10, 1.0 - 1e-7);
    noise.push_back(-torch::log(-torch::log(u)));
  }
  auto g = torch::stack(noise).to(s.logp.device());
  // The sampling runs in float32 whatever the model's dtype (the noise is
  // float32); the decisions go on in the model's dtype.
  auto y = torch::softmax((s.logp.to(torch::kFloat) + g) / cfg.gumbel_tau, -1);
  auto hard = torch::zeros_like(y).scatter_(-1, y.argmax(-1, true), 1.0);
  auto st = hard - y.detach() + y;  // straight-through
  s.keep = st.select(-1, 0).to(s.logp.scalar_type());
  s.keep_hard = hard.select(-1, 0).to(s.logp.scalar_type());
  return s;
}

torch::Tensor run_merger(torch::nn::LayerNorm& memory_ln, torch::nn::ModuleList& merger, torch::nn::LayerNorm& merger_ln,
                         const torch::Tensor& causal_strict, const torch::Tensor& eye, const torch::Tensor& feats,
                         const torch::Tensor& keep, bool checkpoint_blocks) {
  auto memory = memory_ln(feats);
  // Self: key j visible to query i if j < i and kept, or j == i.
  auto self_w = (causal_strict.unsqueeze(0) * keep.unsqueeze(1) + eye.unsqueeze(0)).unsqueeze(1);
  // Cross: only dropped patches, anywhere in the image.
  auto cross_w = (1.0 - keep).unsqueeze(1).unsqueeze(1);
  auto x = feats;
  for (const auto& blk : *merger) {
    auto* b = blk->as<CrossBlock>();
    if (checkpoint_blocks) {
      x = checkpointed([b](const std::vector<torch::Tensor>& in) { return b->forward(in[0], in[1], in[2], in[3]); },
                       {x, memory, self_w, cross_w});
    } else {
      x = b->forward(x, memory, self_w, cross_w);
    }
  }
  return merger_ln(x);
}

MergerCopyImpl::MergerCopyImpl(int64_t dim, int64_t heads, int64_t hidden, int64_t blocks, int64_t patches) {
  memory_ln = register_module("memory_ln", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})));
  merger = register_module("merger", torch::nn::ModuleList());
  for (int64_t i = 0; i < blocks; ++i) merger->push_back(CrossBlock(dim, heads, hidden));
  merger_ln = register_module("merger_ln", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})));
  causal_strict = register_buffer("causal_strict", torch::ones({patches, patches}).tril(-1));
  eye = register_buffer("eye", torch::eye(patches));
}

torch::Tensor MergerCopyImpl::forward(const torch::Tensor& feats, const torch::Tensor& keep) {
  return run_merger(memory_ln, merger, merger_ln, causal_strict, eye, feats, keep, checkpoint_blocks);
}

torch::Tensor TokenizerImpl::merge(const SelectOut& s) {
  auto x = run_merger(memory_ln, merger, merger_ln, causal_strict, eye, s.feats, s.keep, checkpoint_blocks);
  auto z = task2(torch::tanh(task1(x)));
  return F::normalize(z, F::NormalizeFuncOptions().dim(-1));
}

torch::Tensor TokenizerImpl::decode(const torch::Tensor& zq, const torch::Tensor& keep, const torch::Tensor& keep_hard) {
  const int64_t B = zq.size(0);
  // Positional embedding by rank among kept tokens (not by patch location).
  auto rank = (keep_hard.cumsum(1) - 1.0).clamp_min(0).to(torch::kLong);
  auto codes = code_in(zq) + rank_emb.index_select(0, rank.view(-1)).view({B, -1, cfg.width});
  auto cross_w = keep.unsqueeze(1).unsqueeze(1);
  if (cfg.decoder_locality_alpha > 0) cross_w = cross_w * locality.unsqueeze(0).unsqueeze(0);
  auto q = queries.unsqueeze(0).expand({B, -1, -1});
  for (const auto& blk : *decoder) {
    auto* b = blk->as<CrossBlock>();
    if (checkpoint_blocks) {
      q = checkpointed([b](const std::vector<torch::Tensor>& in) { return b->forward(in[0], in[1], torch::Tensor(), in[2]); },
                       {q, codes, cross_w});
    } else {
      q = b->forward(q, codes, torch::Tensor(), cross_w);
    }
  }
  return out2(torch::tanh(out1(decoder_ln(q))));
}

torch::Tensor MHAImpl::causal(const torch::Tensor& x, const torch::Tensor& mask) {
  const auto B = x.size(0), T = x.size(1), dh = dim / heads;
  auto split = [&](const torch::Tensor& t) { return t.view({B, T, heads, dh}).transpose(1, 2); };
  auto out = causal_attention(split(q(x)), split(k(x)), split(v(x)), mask);
  return o(out.transpose(1, 2).reshape({B, T, dim}));
}

torch::Tensor TokenizerImpl::nearest(const torch::Tensor& z) {
  return torch::matmul(z.to(codebook.scalar_type()), codebook.t()).argmax(-1);  // the codebook is float32
}

LMBlockImpl::LMBlockImpl(int64_t dim, int64_t heads, int64_t hidden) {
  ln1 = register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})));
  ln2 = register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})));
  attn = register_module("attn", MHA(dim, heads));
  mlp = register_module("mlp", MLP(dim, hidden));
}

torch::Tensor LMBlockImpl::forward(const torch::Tensor& x_in, const torch::Tensor& causal) {
  auto h = ln1(x_in);
  auto x = x_in + attn->causal(h, causal);
  return x + mlp(ln2(x));
}

RMSNormImpl::RMSNormImpl(int64_t dim, double eps_) : eps(eps_) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  // Normalised in float32 whatever the dtype (as Llama does in bf16).
  auto xf = x.to(torch::kFloat);
  return (xf * torch::rsqrt(xf.pow(2).mean(-1, true) + eps)).to(x.scalar_type()) * weight;
}

LlamaBlockImpl::LlamaBlockImpl(int64_t dim_, int64_t heads_, int64_t hidden, double eps) : heads(heads_), dim(dim_) {
  TORCH_CHECK(dim % heads == 0, "d_model ", dim, " is not divisible by heads ", heads);
  TORCH_CHECK((dim / heads) % 2 == 0, "head width must be even for RoPE");
  auto lin = [](int64_t in, int64_t out) { return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false)); };
  norm1 = register_module("norm1", RMSNorm(dim, eps));
  norm2 = register_module("norm2", RMSNorm(dim, eps));
  q = register_module("q", lin(dim, dim));
  k = register_module("k", lin(dim, dim));
  v = register_module("v", lin(dim, dim));
  o = register_module("o", lin(dim, dim));
  gate = register_module("gate", lin(dim, hidden));
  up = register_module("up", lin(dim, hidden));
  down = register_module("down", lin(hidden, dim));
}

namespace {
// Rotary embedding on [B,h,T,dh] with cos/sin [T, dh/2] (rotate pairs of halves).
torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const auto half = x.size(-1) / 2;
  auto x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  return torch::cat({x1 * cos - x2 * sin, x1 * sin + x2 * cos}, -1);
}
}  // namespace

torch::Tensor LlamaBlockImpl::forward(const torch::Tensor& x_in, const torch::Tensor& causal, const torch::Tensor& cos,
                                      const torch::Tensor& sin) {
  const auto B = x_in.size(0), T = x_in.size(1), dh = dim / heads;
  auto h = norm1(x_in);
  auto split = [&](const torch::Tensor& t) { return t.view({B, T, heads, dh}).transpose(1, 2); };
  auto att = causal_attention(rope(split(q(h)), cos, sin), rope(split(k(h)), cos, sin), split(v(h)), causal);
  auto x = x_in + o(att.transpose(1, 2).reshape({B, T, dim}));
  auto m = norm2(x);
  return x + down(torch::silu(gate(m)) * up(m));
}

LMImpl::LMImpl(const LMConfig& c) : cfg(c) {
  TORCH_CHECK(c.arch == "gpt" || c.arch == "llama", "lm.arch must be gpt or llama, got ", c.arch);
  TORCH_CHECK(c.image_input == "discrete" || c.image_input == "continuous",
              "lm.image_input must be discrete or continuous, got ", c.image_input);
  tok = register_module("tok", torch::nn::Embedding(c.vocab, c.d_model));
  causal = register_buffer("causal", torch::ones({c.max_len, c.max_len}).tril());
  blocks = register_module("blocks", torch::nn::ModuleList());
  if (llama()) {
    for (int64_t i = 0; i < c.layers; ++i) blocks->push_back(LlamaBlock(c.d_model, c.heads, c.mlp, c.norm_eps));
    rms = register_module("norm", RMSNorm(c.d_model, c.norm_eps));
    const int64_t half = c.d_model / c.heads / 2;
    auto inv = torch::pow(c.rope_theta, -torch::arange(half, torch::kDouble) / half);
    auto ang = torch::arange(c.max_len, torch::kDouble).unsqueeze(1) * inv.unsqueeze(0);
    rope_cos = register_buffer("rope_cos", ang.cos().to(torch::kFloat));
    rope_sin = register_buffer("rope_sin", ang.sin().to(torch::kFloat));
    head = register_module("head", torch::nn::Linear(torch::nn::LinearOptions(c.d_model, c.vocab).bias(false)));
  } else {
    pos = register_parameter("pos", torch::randn({c.max_len, c.d_model}) * 0.02);
    for (int64_t i = 0; i < c.layers; ++i) blocks->push_back(LMBlock(c.d_model, c.heads, c.mlp));
    ln = register_module("ln", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.d_model})));
    head = register_module("head", torch::nn::Linear(c.d_model, c.vocab));
  }
  if (continuous()) {
    vis = register_module("vis", MergerCopy(c.vis_width, c.vis_heads, c.vis_mlp_hidden, c.vis_merger_blocks, c.vis_patches));
    vis_proj = register_module("vis_proj", torch::nn::Linear(c.vis_width, c.d_model));
  }
}

torch::Tensor LMImpl::forward(const torch::Tensor& tokens, const torch::Tensor& feats, const torch::Tensor& keep,
                              const torch::Tensor& slots) {
  const int64_t T = tokens.size(1);
  TORCH_CHECK(T <= cfg.max_len, "sequence length ", T, " exceeds max_len ", cfg.max_len);
  auto mask = causal.narrow(0, 0, T).narrow(1, 0, T).unsqueeze(0).unsqueeze(0);
  auto embed = tok(tokens);
  if (continuous() && slots.defined() && slots.sum().item<int64_t>() > 0) {
    // Each sample's slots take the projected merger outputs of its first
    // kept tokens, in raster order.
    auto merged = vis_proj(vis(feats, keep));  // [B,N,d]
    auto slot_counts = slots.sum(1).to(torch::kCPU);
    auto keep_cpu = keep.to(torch::kCPU);
    std::vector<torch::Tensor> rows;
    for (int64_t i = 0; i < tokens.size(0); ++i) {
      const int64_t want = slot_counts[i].item<int64_t>();
      if (want == 0) continue;
      auto kept = keep_cpu[i].nonzero().view(-1);
      TORCH_CHECK(kept.size(0) >= want, "sample ", i, " has ", want, " image slots but only ", kept.size(0), " kept tokens");
      rows.push_back(merged[i].index_select(0, kept.narrow(0, 0, want).to(merged.device())));
    }
    embed = embed.masked_scatter(slots.unsqueeze(-1).to(torch::kBool), torch::cat(rows, 0));
  }
  if (llama()) {
    auto x = embed;
    auto cos = rope_cos.narrow(0, 0, T), sin = rope_sin.narrow(0, 0, T);
    for (const auto& blk : *blocks) {
      auto* b = blk->as<LlamaBlock>();
      if (checkpoint_blocks) {
        x = checkpointed([b, mask, cos, sin](const std::vector<torch::Tensor>& in) { return b->forward(in[0], mask, cos, sin); },
                         {x});
      } else {
        x = b->forward(x, mask, cos, sin);
      }
    }
    return head(rms(x));
  }
  auto x = embed + pos.narrow(0, 0, T).unsqueeze(0);
  for (const auto& blk : *blocks) {
    auto* b = blk->as<LMBlock>();
    if (checkpoint_blocks) {
      x = checkpointed([b, mask](const std::vector<torch::Tensor>& in) { return b->forward(in[0], mask); }, {x});
    } else {
      x = b->forward(x, mask);
    }
  }
  return head(ln(x));
}

}  // namespace lavit
