package hf

import (
	"strings"
	"testing"
)

func TestEVACLIPNames(t *testing.T) {
	m := EVACLIP()
	for _, tc := range []struct {
		in   string
		want Target
	}{
		{"patch_embed.proj.weight", Target{Param: "encoder.patch_embed.proj.weight"}},
		{"patch_embed.proj.bias", Target{Param: "encoder.patch_embed.proj.bias"}},
		{"cls_token", Target{Param: "encoder.cls_token"}},
		{"pos_embed", Target{Param: "encoder.pos_embed"}},
		{"blocks.0.norm1.weight", Target{Param: "encoder.blocks.0.norm1.weight"}},
		{"blocks.12.norm2.bias", Target{Param: "encoder.blocks.12.norm2.bias"}},
		{"blocks.3.attn.qkv.weight", Target{Param: "encoder.blocks.3.qkv.weight"}},
		{"blocks.3.attn.q_bias", Target{Param: "encoder.blocks.3.q_bias"}},
		{"blocks.3.attn.v_bias", Target{Param: "encoder.blocks.3.v_bias"}},
		{"blocks.39.attn.proj.weight", Target{Param: "encoder.blocks.39.proj.weight"}},
		{"blocks.39.attn.proj.bias", Target{Param: "encoder.blocks.39.proj.bias"}},
		{"blocks.7.mlp.fc1.weight", Target{Param: "encoder.blocks.7.mlp.fc1.weight"}},
		{"blocks.7.mlp.fc2.bias", Target{Param: "encoder.blocks.7.mlp.fc2.bias"}},
		{"visual.blocks.7.mlp.fc2.bias", Target{Param: "encoder.blocks.7.mlp.fc2.bias"}},
		{"visual.cls_token", Target{Param: "encoder.cls_token"}},
		{"norm.weight", Target{Ignore: true}},
		{"fc_norm.bias", Target{Ignore: true}},
		{"head.weight", Target{Ignore: true}},
		{"visual.head.weight", Target{Ignore: true}},
		{"rope.freqs_cos", Target{Ignore: true}},
		{"logit_scale", Target{Ignore: true}},
		{"text.transformer.resblocks.0.attn.in_proj_weight", Target{Ignore: true}},
		{"blocks.3.gamma_1", Target{}},                           // layer scale: lavit has none
		{"blocks.3.attn.relative_position_bias_table", Target{}}, // relative position bias: none
		{"blocks.3.attn.k_bias", Target{}},                       // EVA has no k bias
		{"blocks.x.norm1.weight", Target{}},                      // not a block index
		{"model.layers.0.self_attn.q_proj.weight", Target{}},     // a Llama name
		{"encoder.blocks.0.qkv.weight", Target{}},                // lavit's own name
	} {
		if got := m.Map(tc.in); got != tc.want {
			t.Errorf("EVACLIP(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
	for name, want := range map[string]bool{"encoder.cls_token": true, "encoder.blocks.0.q_bias": true, "selector.in.weight": false, "merger.0.ln1.weight": false} {
		if got := m.Owns(name); got != want {
			t.Errorf("EVACLIP owns %q = %v, want %v", name, got, want)
		}
	}
}

func TestLlama2Names(t *testing.T) {
	m := Llama2()
	for _, tc := range []struct {
		in   string
		want Target
	}{
		{"model.embed_tokens.weight", Target{Param: "tok.weight", Rows: true}},
		{"lm_head.weight", Target{Param: "head.weight", Rows: true}},
		{"model.norm.weight", Target{Param: "norm.weight"}},
		{"model.layers.0.input_layernorm.weight", Target{Param: "blocks.0.norm1.weight"}},
		{"model.layers.31.post_attention_layernorm.weight", Target{Param: "blocks.31.norm2.weight"}},
		{"model.layers.5.self_attn.q_proj.weight", Target{Param: "blocks.5.q.weight"}},
		{"model.layers.5.self_attn.k_proj.weight", Target{Param: "blocks.5.k.weight"}},
		{"model.layers.5.self_attn.v_proj.weight", Target{Param: "blocks.5.v.weight"}},
		{"model.layers.5.self_attn.o_proj.weight", Target{Param: "blocks.5.o.weight"}},
		{"model.layers.10.mlp.gate_proj.weight", Target{Param: "blocks.10.gate.weight"}},
		{"model.layers.10.mlp.up_proj.weight", Target{Param: "blocks.10.up.weight"}},
		{"model.layers.10.mlp.down_proj.weight", Target{Param: "blocks.10.down.weight"}},
		{"model.layers.10.self_attn.rotary_emb.inv_freq", Target{Ignore: true}},
		{"model.layers.10.self_attn.q_proj.bias", Target{}},
		{"model.layers.10.mlp.gate_proj.bias", Target{}},
		{"model.embed_tokens.bias", Target{}},
		{"blocks.0.q.weight", Target{}},
	} {
		if got := m.Map(tc.in); got != tc.want {
			t.Errorf("Llama2(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
	for name, want := range map[string]bool{"tok.weight": true, "head.weight": true, "norm.weight": true, "blocks.1.up.weight": true, "vis.merger.0.ln1.weight": false, "vis_proj.weight": false} {
		if got := m.Owns(name); got != want {
			t.Errorf("Llama2 owns %q = %v, want %v", name, got, want)
		}
	}
}

func TestPlan(t *testing.T) {
	params := []Param{
		{"tok.weight", []int64{40, 8}},
		{"blocks.0.q.weight", []int64{8, 8}},
		{"norm.weight", []int64{8}},
		{"head.weight", []int64{40, 8}},
		{"vis_proj.weight", []int64{8, 8}}, // not the LM's: never required
	}
	ti := func(name, dtype string, shape ...int64) TensorInfo {
		return TensorInfo{Name: name, DType: dtype, Shape: shape, File: "s.safetensors"}
	}
	good := []TensorInfo{
		ti("model.embed_tokens.weight", "BF16", 32, 8),
		ti("model.layers.0.self_attn.q_proj.weight", "F16", 8, 8),
		ti("model.norm.weight", "F32", 8),
		ti("lm_head.weight", "F32", 32, 8),
		ti("model.layers.0.self_attn.rotary_emb.inv_freq", "F32", 4),
	}
	mapping := Llama2()
	mapping.Owns = func(p string) bool { return p != "vis_proj.weight" }
	loads, err := Plan(good, params, mapping)
	if err != nil {
		t.Fatal(err)
	}
	if len(loads) != 4 || loads[0].Param.Name != "tok.weight" || loads[0].Rows != 32 || loads[1].Rows != 8 {
		t.Fatalf("plan = %+v", loads)
	}
	with := func(f func([]TensorInfo) []TensorInfo) []TensorInfo {
		return f(append([]TensorInfo(nil), good...))
	}
	for _, tc := range []struct {
		name    string
		tensors []TensorInfo
		want    []string
	}{
		{"missing", with(func(ts []TensorInfo) []TensorInfo { return append(ts[:2], ts[3:]...) }), []string{`missing tensor for parameter "norm.weight" ([8])`}},
		{"extra", append(with(func(ts []TensorInfo) []TensorInfo { return ts }), ti("model.layers.0.mlp.up_proj.weight", "F32", 8, 8)),
			[]string{`unexpected tensor "model.layers.0.mlp.up_proj.weight": it maps to "blocks.0.up.weight"`}},
		{"unknown", append(with(func(ts []TensorInfo) []TensorInfo { return ts }), ti("model.extra", "F32", 1)), []string{`unexpected tensor "model.extra"`}},
		{"wrong shape", with(func(ts []TensorInfo) []TensorInfo { ts[1] = ti(ts[1].Name, "F32", 8, 4); return ts }),
			[]string{`tensor "model.layers.0.self_attn.q_proj.weight" has shape [8,4], parameter "blocks.0.q.weight" needs [8,8]`}},
		{"too many rows", with(func(ts []TensorInfo) []TensorInfo { ts[0] = ti(ts[0].Name, "F32", 41, 8); return ts }),
			[]string{`tensor "model.embed_tokens.weight" has shape [41,8], parameter "tok.weight" needs [40,8]`}},
		{"rows on a plain tensor", with(func(ts []TensorInfo) []TensorInfo { ts[2] = ti(ts[2].Name, "F32", 4); return ts }),
			[]string{`tensor "model.norm.weight" has shape [4]`}},
		{"dtype", with(func(ts []TensorInfo) []TensorInfo { ts[2] = ti(ts[2].Name, "F64", 8); return ts }),
			[]string{`tensor "model.norm.weight" has dtype F64`}},
		{"two problems", with(func(ts []TensorInfo) []TensorInfo { return ts[1:3] }),
			[]string{`missing tensor for parameter "head.weight"`, `missing tensor for parameter "tok.weight"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Plan(tc.tensors, params, mapping)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("got %v, want it to contain %q", err, w)
				}
			}
		})
	}
}

func TestPlanWithoutTheModule(t *testing.T) {
	_, err := Plan([]TensorInfo{{Name: "cls_token", DType: "F32"}}, []Param{{Name: "tok.weight", Shape: []int64{4, 2}}}, EVACLIP())
	if err == nil || !strings.Contains(err.Error(), "EVA-CLIP ViT weights: the model has no parameter they initialise") {
		t.Fatalf("got %v", err)
	}
}

func TestGroups(t *testing.T) {
	p := func(name string) Load { return Load{Param: Param{Name: name}} }
	loads := []Load{p("encoder.blocks.1.qkv.weight"), p("encoder.cls_token"), p("encoder.blocks.1.q_bias"), p("encoder.blocks.10.q_bias")}
	names := []string{"encoder.blocks.1.qkv.weight", "encoder.blocks.1.q_bias", "encoder.blocks.10.q_bias", "encoder.cls_token", "selector.in.weight"}
	gs, err := Groups(loads, names)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, g := range gs {
		got = append(got, g.Prefix+"="+string(rune('0'+len(g.Loads))))
	}
	if strings.Join(got, " ") != "encoder.blocks.1.=2 encoder.cls_token=1 encoder.blocks.10.=1" {
		t.Fatalf("groups %v", got)
	}
	// A block with a parameter outside the load cannot be selected by prefix.
	if _, err := Groups(loads[:1], names); err == nil || !strings.Contains(err.Error(), `"encoder.blocks.1.q_bias"`) {
		t.Fatalf("got %v, want an error naming the parameter left out", err)
	}
}
