package modelcfg

import (
	"strings"
	"testing"
)

// TestParseConfigErrors: every bad config gets an error naming the field
// (a want of "" marks a config near a limit that is accepted).
func TestParseConfigErrors(t *testing.T) {
	tests := []struct{ json, want string }{
		{`{"stage":3}`, "stage must be 1 or 2"},
		{`{"stage":1,"lm":{}}`, "not \"lm\""},
		{`{"stage":2,"tokenizer":{}}`, "not \"tokenizer\""},
		{`{"stage":1,"tokenizer":{"image":30,"patch":4}}`, "multiple of tokenizer.patch"},
		{`{"stage":1,"tokenizer":{"width":64,"heads":5}}`, "divisible"},
		{`{"stage":1,"tokenizer":{"rho":2}}`, "tokenizer.rho"},
		{`{"stage":1,"tokenizer":{"ema_decay":1}}`, "ema_decay"},
		{`{"stage":1,"tokenizer":{"width":-1}}`, "tokenizer.width"},
		{`{"stage":2,"lm":{"d_model":64,"heads":3}}`, "lm.d_model"},
		{`{"stage":1,"optim":{"lr":-1}}`, "optim.lr"},
		{`{"stage":1,"optim":{"beta2":1}}`, "beta"},
		{`{"stage":1,"optim":{"min_lr_ratio":2}}`, "min_lr_ratio"},
		{`{"stage":1,"tokenizer":{"width":"wide"}}`, "width"},
		{`{"stage":1} {}`, "trailing"},
		{`{"stage":1,"extra":true}`, "extra"},
		{`{"stage":1,"text":{"tokenizer":"words"}}`, "\"text\" is for stage 2"},
		{`{"stage":2,"text":{"tokenizer":"bpe"}}`, "text.tokenizer must be"},
		{`{"stage":2,"eval":"vibes"}`, "eval must be"},
		{`{"stage":2,"eval":"synthetic"}`, "needs text.tokenizer"},
		// Upper bounds: each names the field and its limit.
		{`{"stage":1,"tokenizer":{"width":65537}}`, "tokenizer.width is 65537; the limit is 65536"},
		{`{"stage":1,"tokenizer":{"heads":1025}}`, "tokenizer.heads is 1025; the limit is 1024"},
		{`{"stage":1,"tokenizer":{"merger_blocks":1025}}`, "tokenizer.merger_blocks is 1025; the limit is 1024"},
		{`{"stage":1,"tokenizer":{"decoder_blocks":-1}}`, "tokenizer.decoder_blocks must not be negative"},
		{`{"stage":1,"tokenizer":{"encoder_blocks":5000}}`, "tokenizer.encoder_blocks is 5000; the limit is 1024"},
		{`{"stage":1,"tokenizer":{"encoder_heads":-2}}`, "tokenizer.encoder_heads must not be negative"},
		{`{"stage":1,"tokenizer":{"encoder_mlp_hidden":9999999}}`, "tokenizer.encoder_mlp_hidden is 9999999; the limit is 65536"},
		{`{"stage":1,"tokenizer":{"mlp_ratio":-4}}`, "tokenizer.mlp_ratio must not be negative"},
		{`{"stage":1,"tokenizer":{"mlp_ratio":65}}`, "tokenizer.mlp_ratio is 65; the limit is 64"},
		{`{"stage":1,"tokenizer":{"mlp_hidden":65537}}`, "tokenizer.mlp_hidden is 65537; the limit is 65536"},
		{`{"stage":1,"tokenizer":{"channels":65}}`, "tokenizer.channels is 65; the limit is 64"},
		{`{"stage":1,"tokenizer":{"code_dim":65537}}`, "tokenizer.code_dim is 65537; the limit is 65536"},
		{`{"stage":1,"tokenizer":{"codebook":1048577}}`, "tokenizer.codebook is 1048577; the limit is 1048576"},
		{`{"stage":1,"tokenizer":{"kmeans_iters":-1}}`, "tokenizer.kmeans_iters must not be negative"},
		{`{"stage":1,"tokenizer":{"image":8200,"patch":8}}`, "tokenizer.image is 8200; the limit is 8192"},
		{`{"stage":1,"tokenizer":{"image":2048,"patch":4}}`, "tokenizer.image 2048 in patches of 4 is 262144 patches; the limit is 65536"},
		{`{"stage":1,"tokenizer":{"image":16}}`, ""},
		{`{"stage":1,"tokenizer":{"patch":64}}`, "tokenizer.patch 64 is larger than tokenizer.image 32"},
		{`{"stage":1,"tokenizer":{"ratio_weight":-1}}`, "tokenizer.ratio_weight must not be negative"},
		{`{"stage":1,"tokenizer":{"gumbel_tau":-1}}`, "tokenizer.gumbel_tau must not be negative"},
		{`{"stage":1,"tokenizer":{"width":65536,"merger_blocks":1024}}`, "model config: the model has "},
		{`{"stage":1,"tokenizer":{"image":8192,"patch":8192,"channels":64,"width":65536,"encoder":"vit","encoder_blocks":1}}`, "frozen parameters; the limit is 1099511627776"},
		{`{"stage":2,"lm":{"vocab":4194305}}`, "lm.vocab is 4194305; the limit is 4194304"},
		{`{"stage":2,"lm":{"d_model":65537}}`, "lm.d_model is 65537; the limit is 65536"},
		{`{"stage":2,"lm":{"layers":1025}}`, "lm.layers is 1025; the limit is 1024"},
		{`{"stage":2,"lm":{"heads":-1}}`, "lm.heads must not be negative"},
		{`{"stage":2,"lm":{"mlp":1000000}}`, "lm.mlp is 1000000; the limit is 65536"},
		{`{"stage":2,"lm":{"mlp":1e30}}`, "cannot unmarshal number 1e30"},
		{`{"stage":2,"lm":{"max_len":65537}}`, "lm.max_len is 65537; the limit is 65536"},
		{`{"stage":2,"lm":{"vis_width":-64}}`, "lm.vis_width must not be negative"},
		{`{"stage":2,"lm":{"vis_heads":2000}}`, "lm.vis_heads is 2000; the limit is 1024"},
		{`{"stage":2,"lm":{"vis_mlp_hidden":70000}}`, "lm.vis_mlp_hidden is 70000; the limit is 65536"},
		{`{"stage":2,"lm":{"vis_merger_blocks":-2}}`, "lm.vis_merger_blocks must not be negative"},
		{`{"stage":2,"lm":{"vis_patches":65537}}`, "lm.vis_patches is 65537; the limit is 65536"},
		{`{"stage":2,"lm":{"rope_theta":-1}}`, "lm.rope_theta must not be negative"},
		{`{"stage":2,"lm":{"norm_eps":-1e-5}}`, "lm.norm_eps must not be negative"},
		{`{"stage":2,"lm":{"arch":"llama","d_model":65536,"layers":1024,"mlp":65536}}`, "trainable parameters; the limit is 1099511627776"},
		{`{"stage":2,"optim":{"total_steps":1099511627777}}`, "optim.total_steps is 1099511627777; the limit is 1099511627776"},
		{`{"stage":2,"optim":{"warmup_steps":-1}}`, "optim.warmup_steps must not be negative"},
		{`{"stage":2,"optim":{"eps":-1}}`, "optim.eps must not be negative"},
		{`{"stage":2,"optim":{"beta1":-0.5}}`, "optim.beta1 must not be negative"},
	}
	for _, tc := range tests {
		_, err := ParseConfig([]byte(tc.json))
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s: %v, want it accepted", tc.json, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error mentioning %q", tc.json, err, tc.want)
		}
	}
}
