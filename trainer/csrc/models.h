// models.h: LaVIT stage 1 (dynamic visual tokenizer) and stage 2 (unified
// next-token LM) as libtorch modules. See ../DESIGN.md and ../../MODEL.md.
#pragma once

#include <torch/torch.h>
#include <torch/version.h>

#include <functional>
#include <string>
#include <vector>

namespace lavit {

// Stage-1 configuration (tiny defaults from MODEL.md).
struct TokenizerConfig {
  int64_t image = 32, patch = 4, channels = 3;
  int64_t width = 64, heads = 4, mlp_ratio = 4;
  int64_t merger_blocks = 2, decoder_blocks = 2;
  int64_t code_dim = 16, codebook = 256;
  double rho = 1.0 / 3.0, ratio_weight = 2.0, commit_beta = 1.0, ema_decay = 0.99, gumbel_tau = 1.0;
  double decoder_locality_alpha = 0.5;
  double encoder_pos_scale = 0.1;
  int64_t kmeans_iters = 10;
  int64_t mlp_hidden = 0;  // 0 = width * mlp_ratio
  // Frozen encoder: "standin" (fixed seeded projection, the tiny model) or
  // "vit" (an EVA-CLIP-style ViT whose weights the user loads; CLS dropped,
  // last block before the final norm, CLIP normalisation).
  std::string encoder = "standin";
  int64_t encoder_blocks = 40, encoder_heads = 16, encoder_mlp_hidden = 6144;
  int64_t hidden() const { return mlp_hidden > 0 ? mlp_hidden : width * mlp_ratio; }
  int64_t patches() const { return (image / patch) * (image / patch); }
  int64_t patch_dim() const { return channels * patch * patch; }
};

// Stage-2 configuration.
// arch "gpt": learned positions, LayerNorm, GELU MLP, biases (the tiny LM).
// arch "llama": RoPE, RMSNorm, SwiGLU MLP, no biases (Llama-2 shapes).
struct LMConfig {
  std::string arch = "gpt";
  int64_t vocab = 278, d_model = 64, layers = 2, heads = 4, mlp = 256, max_len = 56;
  double rope_theta = 10000.0, norm_eps = 1e-5;
  // image_input "discrete": images enter as visual ids only. "continuous":
  // image→text samples enter as the post-LN outputs of a trainable copy of
  // the stage-1 merger through a projector (full LaVIT's understanding
  // path); text→image stays discrete. vis_* give the merger's shape.
  std::string image_input = "discrete";
  int64_t vis_width = 64, vis_heads = 4, vis_mlp_hidden = 256, vis_merger_blocks = 2, vis_patches = 64;
};

// Seeded per-sample randomness: a generator keyed by (seed, salt, step, position),
// so a sample gets the same noise whichever worker holds it.
uint64_t sample_key(uint64_t seed, uint64_t salt, int64_t step, int64_t position);

// Attention with a multiplicative non-negative weight on the scores
// (DynamicViT's policy trick): exp(s)·w renormalised with eps, so 0/1 policies
// with straight-through gradients can mask keys while tensors stay dense.
// With hard = true the weight is a strict 0/1 mask (masked softmax, no eps
// leak), as the LM's causal mask must be.
torch::Tensor policy_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& weight, bool hard = false);

// BlockFn computes one transformer block's output from its tensor inputs.
using BlockFn = std::function<torch::Tensor(const std::vector<torch::Tensor>&)>;

// checkpointed runs fn(inputs) for training without keeping its
// activations (activation checkpointing): when autograd is recording, the
// forward pass runs without a graph and backward runs fn again with one,
// then back-propagates through it into the inputs and the block's
// parameters (PyTorch's reentrant torch.utils.checkpoint). fn must be
// deterministic. When autograd is not recording, it is just fn(inputs).
torch::Tensor checkpointed(const BlockFn& fn, const std::vector<torch::Tensor>& inputs);

struct MHAImpl : torch::nn::Module {
  MHAImpl(int64_t dim, int64_t heads);
  // weight: multiplicative mask broadcastable to [B, heads, Nq, Nk], or undefined for none.
  torch::Tensor forward(const torch::Tensor& xq, const torch::Tensor& xkv, const torch::Tensor& weight,
                        bool hard = false);
  // causal: self-attention of x over a causal mask ([T,T], 1 = may attend),
  // through causal_attention (the fused kernel on libtorch 2.x).
  torch::Tensor causal(const torch::Tensor& x, const torch::Tensor& mask);
  int64_t heads, dim;
  torch::nn::Linear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr};
};
TORCH_MODULE(MHA);

struct MLPImpl : torch::nn::Module {
  MLPImpl(int64_t dim, int64_t hidden);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(MLP);

// Selector: LN -> Lin -> GELU; local half + global mean half -> MLP -> log-softmax(keep, drop).
struct SelectorImpl : torch::nn::Module {
  explicit SelectorImpl(int64_t dim);
  torch::Tensor forward(const torch::Tensor& feats);  // [B,N,D] -> log-probs [B,N,2]
  torch::nn::LayerNorm ln{nullptr};
  torch::nn::Linear in{nullptr}, h1{nullptr}, h2{nullptr}, out{nullptr};
};
TORCH_MODULE(Selector);

// A block of both the merger and the decoder: self-attention (with an
// optional multiplicative weight), cross-attention to a memory (weighted),
// MLP, all pre-LN. The merger passes its causal keep policy as the self
// weight and the LayerNormed frozen features restricted to dropped patches
// as memory; the decoder passes no self weight and the codes as memory.
struct CrossBlockImpl : torch::nn::Module {
  CrossBlockImpl(int64_t dim, int64_t heads, int64_t hidden);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& memory, const torch::Tensor& self_w,
                        const torch::Tensor& cross_w);
  torch::nn::LayerNorm ln1{nullptr}, ln2{nullptr}, ln3{nullptr};
  MHA self_attn{nullptr}, cross_attn{nullptr};
  MLP mlp{nullptr};
};
TORCH_MODULE(CrossBlock);

// run_merger: the merger stack on frozen features with keep decisions
// (shared by the tokenizer and stage 2's trainable copy). Returns the
// post-LN outputs [B,N,D].
torch::Tensor run_merger(torch::nn::LayerNorm& memory_ln, torch::nn::ModuleList& merger, torch::nn::LayerNorm& merger_ln,
                         const torch::Tensor& causal_strict, const torch::Tensor& eye, const torch::Tensor& feats,
                         const torch::Tensor& keep, bool checkpoint_blocks = false);

// The trainable merger copy of stage 2's continuous path, named like the
// tokenizer's (memory_ln, merger.N, merger_ln) so stage-1 weights load into it.
struct MergerCopyImpl : torch::nn::Module {
  MergerCopyImpl(int64_t dim, int64_t heads, int64_t hidden, int64_t blocks, int64_t patches);
  torch::Tensor forward(const torch::Tensor& feats, const torch::Tensor& keep);
  bool checkpoint_blocks = false;
  torch::nn::LayerNorm memory_ln{nullptr}, merger_ln{nullptr};
  torch::nn::ModuleList merger{nullptr};
  torch::Tensor causal_strict, eye;
};
TORCH_MODULE(MergerCopy);


// EVA-CLIP ViT block: pre-LN attention (qkv without bias, separate q and v
// biases) and a GELU MLP.
struct EVABlockImpl : torch::nn::Module {
  EVABlockImpl(int64_t dim, int64_t heads, int64_t hidden);
  torch::Tensor forward(const torch::Tensor& x);
  int64_t heads, dim;
  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr};
  torch::nn::Linear qkv{nullptr}, proj{nullptr};
  torch::Tensor q_bias, v_bias;
  MLP mlp{nullptr};
};
TORCH_MODULE(EVABlock);

struct PatchEmbedImpl : torch::nn::Module {
  PatchEmbedImpl(int64_t channels, int64_t dim, int64_t patch);
  torch::nn::Conv2d proj{nullptr};
};
TORCH_MODULE(PatchEmbed);

// The frozen ViT: patch embedding, CLS + position embedding, blocks.
struct ViTImpl : torch::nn::Module {
  ViTImpl(const TokenizerConfig& c);
  torch::Tensor forward(const torch::Tensor& images);  // [B,C,H,W] -> [B,N,D] (CLS dropped)
  PatchEmbed patch_embed{nullptr};
  torch::Tensor cls_token, pos_embed, mean, std;
  torch::nn::ModuleList blocks{nullptr};
};
TORCH_MODULE(ViT);

// Output of the stage-1 forward pass up to the batch statistics.
struct SelectOut {
  torch::Tensor feats;      // frozen features [B,N,D]
  torch::Tensor logp;       // selector log-probs [B,N,2]
  torch::Tensor keep;       // straight-through keep, values 0/1 [B,N]
  torch::Tensor keep_hard;  // detached 0/1 [B,N]
};

struct TokenizerImpl : torch::nn::Module {
  explicit TokenizerImpl(const TokenizerConfig& c, uint64_t seed);
  // Frozen encoder stand-in: patchify, fixed projection, position vector, GELU, LN.
  torch::Tensor encode(const torch::Tensor& images);
  // Selector + hard Gumbel keep decisions keyed per sample.
  SelectOut select(const torch::Tensor& images, const std::vector<int64_t>& positions, int64_t step,
                   uint64_t seed, uint64_t salt);
  // Merger + task layer: l2-normalised code-space vectors [B,N,C].
  torch::Tensor merge(const SelectOut& s);
  // Decoder: reconstruct all N features from code vectors of kept tokens.
  torch::Tensor decode(const torch::Tensor& zq, const torch::Tensor& keep, const torch::Tensor& keep_hard);
  // Nearest code (max cosine) for l2-normalised z [.., C].
  torch::Tensor nearest(const torch::Tensor& z);

  TokenizerConfig cfg;
  // checkpoint_blocks: activation checkpointing of the merger and decoder
  // blocks (lavit_set_checkpointing).
  bool checkpoint_blocks = false;
  // Frozen, never trained (buffers, not parameters).
  torch::Tensor enc_proj, enc_pos, codebook, locality, causal_strict, eye;
  ViT vit{nullptr};  // set when cfg.encoder == "vit"; frozen
  Selector selector{nullptr};
  torch::nn::ModuleList merger{nullptr}, decoder{nullptr};
  torch::nn::LayerNorm memory_ln{nullptr}, merger_ln{nullptr}, decoder_ln{nullptr};
  torch::nn::Linear task1{nullptr}, task2{nullptr}, code_in{nullptr}, out1{nullptr}, out2{nullptr};
  torch::Tensor rank_emb, queries;
};
TORCH_MODULE(Tokenizer);

// Stage 2: a causal transformer LM over text and visual ids.
struct LMBlockImpl : torch::nn::Module {
  LMBlockImpl(int64_t dim, int64_t heads, int64_t hidden);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& causal);
  torch::nn::LayerNorm ln1{nullptr}, ln2{nullptr};
  MHA attn{nullptr};
  MLP mlp{nullptr};
};
TORCH_MODULE(LMBlock);

struct RMSNormImpl : torch::nn::Module {
  RMSNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;
  double eps;
};
TORCH_MODULE(RMSNorm);

// A Llama-style block: RMSNorm → attention with RoPE (no biases) → RMSNorm → SwiGLU.
struct LlamaBlockImpl : torch::nn::Module {
  LlamaBlockImpl(int64_t dim, int64_t heads, int64_t hidden, double eps);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& causal, const torch::Tensor& cos,
                        const torch::Tensor& sin);
  int64_t heads, dim;
  RMSNorm norm1{nullptr}, norm2{nullptr};
  torch::nn::Linear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr}, gate{nullptr}, up{nullptr}, down{nullptr};
};
TORCH_MODULE(LlamaBlock);

struct LMImpl : torch::nn::Module {
  explicit LMImpl(const LMConfig& c);
  // tokens [B,T] -> logits [B,T,V]. In continuous mode, feats [B,N,D] and
  // keep [B,N] give each sample's image, and slots [B,T] (0/1) mark where the
  // projected merger outputs of its kept tokens go, in raster order.
  torch::Tensor forward(const torch::Tensor& tokens, const torch::Tensor& feats = {}, const torch::Tensor& keep = {},
                        const torch::Tensor& slots = {});
  bool llama() const { return cfg.arch == "llama"; }
  bool continuous() const { return cfg.image_input == "continuous"; }
  MergerCopy vis{nullptr};
  torch::nn::Linear vis_proj{nullptr};
  LMConfig cfg;
  // checkpoint_blocks: activation checkpointing of every transformer block
  // (and the continuous input's merger blocks).
  bool checkpoint_blocks = false;
  torch::nn::Embedding tok{nullptr};
  torch::Tensor pos, causal, rope_cos, rope_sin;
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::LayerNorm ln{nullptr};
  RMSNorm rms{nullptr};
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(LM);

}  // namespace lavit
