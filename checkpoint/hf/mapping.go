package hf

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// Target is where one checkpoint tensor goes in a lavit model.
type Target struct {
	// Param is the model parameter's name; "" with Ignore false means the
	// mapping does not know the tensor (an unexpected tensor: an error).
	Param string
	// Ignore marks a tensor the model deliberately has no place for (a
	// classification head, a final norm lavit's encoder does not apply,
	// rotary tables lavit computes itself).
	Ignore bool
	// Rows allows the tensor to fill only the first rows of a parameter
	// with more rows (the LM's vocabulary, enlarged past Llama's 32000 text
	// ids); the other rows keep the model's own initialisation.
	Rows bool
}

// Mapping maps a released checkpoint's tensor names onto a lavit module.
type Mapping struct {
	Name string
	// Map says where a checkpoint tensor goes.
	Map func(name string) Target
	// Owns reports whether a model parameter belongs to the module the
	// checkpoint initialises: each of them must be loaded.
	Owns func(param string) bool
}

// Param is a model parameter as the plan sees it.
type Param struct {
	Name  string
	Shape []int64
}

// Load is one planned copy: a checkpoint tensor into a model parameter.
type Load struct {
	Tensor TensorInfo
	Param  Param
	// Rows is the number of leading rows the tensor fills (Param.Shape[0]
	// when it fills the whole parameter).
	Rows int64
}

// Plan matches a checkpoint's tensors with a model's parameters under a
// mapping, before anything is read: every tensor must map to a parameter
// of the module or be ignored by the mapping, every parameter the module
// owns must be loaded exactly once, shapes must match (or, for a Rows
// target, agree past the first dimension with no more rows than the
// parameter), and the dtype must be readable. Errors name the tensor (and
// parameter) and, for shapes, both shapes; up to maxProblems are reported
// together, in name order.
func Plan(tensors []TensorInfo, params []Param, m Mapping) ([]Load, error) {
	byName := map[string]Param{}
	owned := 0
	for _, p := range params {
		byName[p.Name] = p
		if m.Owns(p.Name) {
			owned++
		}
	}
	if owned == 0 {
		return nil, fmt.Errorf("%s weights: the model has no parameter they initialise (is the module in its config?)", m.Name)
	}
	var loads []Load
	var problems []string
	from := map[string]string{} // parameter → tensor loaded into it
	for _, t := range tensors {
		tg := m.Map(t.Name)
		if tg.Ignore {
			continue
		}
		p, ok := byName[tg.Param]
		switch {
		case tg.Param == "":
			problems = append(problems, fmt.Sprintf("unexpected tensor %q: the %s mapping has no place for it", t.Name, m.Name))
			continue
		case !ok || !m.Owns(tg.Param):
			problems = append(problems, fmt.Sprintf("unexpected tensor %q: it maps to %q, which the model has not", t.Name, tg.Param))
			continue
		}
		if prev, dup := from[p.Name]; dup {
			problems = append(problems, fmt.Sprintf("tensors %q and %q both map to %q", prev, t.Name, p.Name))
			continue
		}
		from[p.Name] = t.Name
		rows, err := fit(t, p, tg.Rows)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		if err := CheckDType(t); err != nil {
			problems = append(problems, err.Error())
			continue
		}
		loads = append(loads, Load{Tensor: t, Param: p, Rows: rows})
	}
	for _, p := range params {
		if m.Owns(p.Name) {
			if _, ok := from[p.Name]; !ok {
				problems = append(problems, fmt.Sprintf("missing tensor for parameter %q (%s)", p.Name, shapeString(p.Shape)))
			}
		}
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		more := ""
		if len(problems) > maxProblems {
			more = fmt.Sprintf("; and %d more", len(problems)-maxProblems)
			problems = problems[:maxProblems]
		}
		return nil, fmt.Errorf("%s weights: %s%s", m.Name, strings.Join(problems, "; "), more)
	}
	return loads, nil
}

const maxProblems = 8

// fit checks a tensor's shape against a parameter's; it returns the rows
// the tensor fills.
func fit(t TensorInfo, p Param, rows bool) (int64, error) {
	if equalShape(t.Shape, p.Shape) {
		if len(p.Shape) == 0 {
			return 1, nil
		}
		return p.Shape[0], nil
	}
	if rows && len(t.Shape) == len(p.Shape) && len(p.Shape) > 0 && equalShape(t.Shape[1:], p.Shape[1:]) && t.Shape[0] <= p.Shape[0] {
		return t.Shape[0], nil
	}
	return 0, fmt.Errorf("tensor %q has shape %s, parameter %q needs %s", t.Name, shapeString(t.Shape), p.Name, shapeString(p.Shape))
}

func equalShape(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func shapeString(s []int64) string {
	parts := make([]string, len(s))
	for i, d := range s {
		parts[i] = fmt.Sprint(d)
	}
	return "[" + strings.Join(parts, ",") + "]"
}

var (
	evaBlock   = regexp.MustCompile(`^blocks\.(\d+)\.(.+)$`)
	llamaLayer = regexp.MustCompile(`^model\.layers\.(\d+)\.(.+)$`)
)

// EVACLIP maps the EVA-CLIP ViT-g/14 visual encoder, as LAVIS's
// eva_vit_g.pth and EVA's EVA01-CLIP-g-14 name it (optionally under
// "visual.", as in a whole CLIP checkpoint), onto lavit's frozen encoder
// (parameters "encoder.…", trainer/csrc/models.cpp ViT and EVABlock). The
// layouts are the same (a fused qkv weight [3D, D] with separate q_bias and
// v_bias, k without bias; conv patch embedding; cls token and absolute
// position embedding); lavit's block has no "attn." level:
//
//	patch_embed.proj.{weight,bias}      encoder.patch_embed.proj.{weight,bias}
//	cls_token, pos_embed                encoder.cls_token, encoder.pos_embed
//	blocks.N.norm{1,2}.{weight,bias}    encoder.blocks.N.norm{1,2}.{weight,bias}
//	blocks.N.attn.qkv.weight            encoder.blocks.N.qkv.weight
//	blocks.N.attn.{q_bias,v_bias}       encoder.blocks.N.{q_bias,v_bias}
//	blocks.N.attn.proj.{weight,bias}    encoder.blocks.N.proj.{weight,bias}
//	blocks.N.mlp.fc{1,2}.{weight,bias}  encoder.blocks.N.mlp.fc{1,2}.{weight,bias}
//
// Ignored: the final norm, fc_norm and classification head (lavit takes
// the last block's output before any final norm, as LaVIT does), rotary
// tables ("rope.") and, in a whole CLIP checkpoint, everything outside
// "visual." (the text tower, logit_scale). Layer scale (gamma_1, gamma_2)
// and relative position bias tables are not ignored: lavit's block has
// neither, so a checkpoint with them is refused (ViT-g/14 has neither).
func EVACLIP() Mapping {
	return Mapping{
		Name: "EVA-CLIP ViT",
		Map: func(name string) Target {
			if rest, ok := strings.CutPrefix(name, "visual."); ok {
				name = rest
			} else if isCLIPNonVisual(name) {
				return Target{Ignore: true}
			}
			switch {
			case name == "patch_embed.proj.weight", name == "patch_embed.proj.bias", name == "cls_token", name == "pos_embed":
				return Target{Param: "encoder." + name}
			case strings.HasPrefix(name, "norm."), strings.HasPrefix(name, "fc_norm."), strings.HasPrefix(name, "head."), strings.HasPrefix(name, "rope."):
				return Target{Ignore: true}
			}
			m := evaBlock.FindStringSubmatch(name)
			if m == nil {
				return Target{}
			}
			switch rest := m[2]; rest {
			case "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
				"mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias":
				return Target{Param: "encoder.blocks." + m[1] + "." + rest}
			case "attn.qkv.weight", "attn.q_bias", "attn.v_bias", "attn.proj.weight", "attn.proj.bias":
				return Target{Param: "encoder.blocks." + m[1] + "." + strings.TrimPrefix(rest, "attn.")}
			}
			return Target{}
		},
		Owns: func(param string) bool { return strings.HasPrefix(param, "encoder.") },
	}
}

// isCLIPNonVisual reports names of a whole CLIP checkpoint's other parts.
func isCLIPNonVisual(name string) bool {
	return strings.HasPrefix(name, "text.") || name == "logit_scale" || name == "positional_embedding" ||
		name == "text_projection" || name == "token_embedding.weight" || strings.HasPrefix(name, "transformer.") ||
		strings.HasPrefix(name, "ln_final.")
}

// Llama2 maps a Llama-2 checkpoint in Hugging Face transformers' format
// (LlamaForCausalLM) onto lavit's `arch: llama` LM (trainer/csrc/models.cpp
// LM and LlamaBlock). transformers' q_proj and k_proj rows are already
// permuted for rotate-half RoPE, which is what lavit applies, so every
// weight is copied as it is ([out, in], no bias):
//
//	model.embed_tokens.weight                  tok.weight     (rows: Llama's 32000 of lm.vocab)
//	model.layers.N.input_layernorm.weight      blocks.N.norm1.weight
//	model.layers.N.post_attention_layernorm... blocks.N.norm2.weight
//	model.layers.N.self_attn.{q,k,v,o}_proj    blocks.N.{q,k,v,o}.weight
//	model.layers.N.mlp.{gate,up,down}_proj     blocks.N.{gate,up,down}.weight
//	model.norm.weight                          norm.weight
//	lm_head.weight                             head.weight    (rows, as tok.weight)
//
// Ignored: model.layers.N.self_attn.rotary_emb.inv_freq, which older
// conversions saved (lavit computes the tables from lm.rope_theta). The
// module is the LM proper (tok., blocks., norm., head.): a continuous LM's
// "vis." merger copy and "vis_proj." are not Llama's and stay as they are.
// Grouped-query attention (Llama-2-70B's k/v [1024, 8192]) is refused by
// shape: lavit's blocks have as many key/value heads as query heads.
func Llama2() Mapping {
	return Mapping{
		Name: "Llama-2",
		Map: func(name string) Target {
			switch name {
			case "model.embed_tokens.weight":
				return Target{Param: "tok.weight", Rows: true}
			case "lm_head.weight":
				return Target{Param: "head.weight", Rows: true}
			case "model.norm.weight":
				return Target{Param: "norm.weight"}
			}
			m := llamaLayer.FindStringSubmatch(name)
			if m == nil {
				return Target{}
			}
			blk := "blocks." + m[1] + "."
			switch m[2] {
			case "input_layernorm.weight":
				return Target{Param: blk + "norm1.weight"}
			case "post_attention_layernorm.weight":
				return Target{Param: blk + "norm2.weight"}
			case "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight":
				return Target{Param: blk + strings.TrimSuffix(strings.TrimPrefix(m[2], "self_attn."), "_proj.weight") + ".weight"}
			case "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight":
				return Target{Param: blk + strings.TrimSuffix(strings.TrimPrefix(m[2], "mlp."), "_proj.weight") + ".weight"}
			case "self_attn.rotary_emb.inv_freq":
				return Target{Ignore: true}
			}
			return Target{}
		},
		Owns: func(param string) bool {
			return strings.HasPrefix(param, "tok.") || strings.HasPrefix(param, "blocks.") ||
				strings.HasPrefix(param, "norm.") || strings.HasPrefix(param, "head.")
		},
	}
}

// ForModule returns the mapping for a run spec's model.init_from key.
func ForModule(module string) (Mapping, error) {
	switch module {
	case "encoder":
		return EVACLIP(), nil
	case "lm":
		return Llama2(), nil
	}
	return Mapping{}, fmt.Errorf("init_from: unknown module %q (want encoder or lm)", module)
}

var blockPrefix = regexp.MustCompile(`^(.*?\bblocks\.\d+\.)`)

// Groups cuts loads into groups that can each be moved into the model on
// their own: the parameters of one block ("….blocks.N.") together, every
// other parameter alone. Each group has a prefix that names exactly its
// parameters among all the model's (names), which is how the shim selects
// them; a prefix that would also select a parameter outside the group is
// an error. Groups come in the order their first tensor is read.
func Groups(loads []Load, names []string) ([]Group, error) {
	idx := map[string]int{}
	var groups []Group
	for _, l := range loads {
		prefix := l.Param.Name
		if m := blockPrefix.FindStringSubmatch(prefix); m != nil {
			prefix = m[1]
		}
		i, ok := idx[prefix]
		if !ok {
			i = len(groups)
			idx[prefix] = i
			groups = append(groups, Group{Prefix: prefix})
		}
		groups[i].Loads = append(groups[i].Loads, l)
	}
	for _, g := range groups {
		in := map[string]bool{}
		for _, l := range g.Loads {
			in[l.Param.Name] = true
		}
		for _, n := range names {
			if strings.HasPrefix(n, g.Prefix) && !in[n] {
				return nil, fmt.Errorf("parameter %q shares the prefix %q with loaded parameters but is not loaded itself", n, g.Prefix)
			}
		}
	}
	return groups, nil
}

// Group is loads moved into the model together, selected by Prefix.
type Group struct {
	Prefix string
	Loads  []Load
}
