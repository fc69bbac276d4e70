package modelcfg

import (
	"strings"
	"testing"
)

// TestParseConfigErrors: every bad config gets an error naming the field.
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
	}
	for _, tc := range tests {
		_, err := ParseConfig([]byte(tc.json))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error mentioning %q", tc.json, err, tc.want)
		}
	}
}
