"""The PyTorch eager reference for the GPU check's medium LM.

The same model as trainer's mediumLM (Llama-shaped: RoPE, RMSNorm, SwiGLU,
d 1024, 12 layers, 16 heads, MLP 2816, vocabulary 48386, untied head, no
biases), the same batch (8 rows of 511 tokens, every target trained), fp32,
AdamW: one training step (forward, backward, optimizer) timed on the GPU,
so lavit's step time has a PyTorch eager number beside it.

    python3 deploy/gpu/reference_step.py [--device cuda:0] [--steps 20]
"""
import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=48386, hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
                      num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=512,
                      rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                      attn_implementation="eager")
    model = LlamaForCausalLM(cfg).to(args.device)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    rows, seq = 8, 511
    i = torch.arange(rows).unsqueeze(1)
    k = torch.arange(seq).unsqueeze(0)
    tokens = ((i * 7919 + k * 104729) % 48386).to(args.device)
    targets = ((i * 7919 + (k + 1) * 104729) % 48386).to(args.device)

    def step():
        logits = model(input_ids=tokens).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize(args.device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize(args.device)
    ms = (time.perf_counter() - t0) * 1000 / args.steps
    print(f"| medium LM, PyTorch {torch.__version__} eager (transformers) | {params / 1e6:.1f} M | 8 × 511 tokens | – | {ms:.2f} |")


if __name__ == "__main__":
    main()
