package worker

import (
	"github.com/lavit-org/lavit/shards/decode"
	"github.com/lavit-org/lavit/trainer"
)

// preprocessFor is the image preprocessing a visual tokenizer of config
// cfg takes at size×size: LaVIT's (Pillow's bicubic to size×size, no
// crop, CLIP's mean and std) for the EVA-CLIP encoder ("vit"), which was
// pretrained on inputs made so; the tiny configs' bilinear centre crop in
// [0,1] for the stand-in encoder.
func preprocessFor(cfg trainer.Config, size int) decode.Preprocess {
	if cfg.Tokenizer != nil && cfg.Tokenizer.Encoder == "vit" {
		return decode.LaVIT(size)
	}
	return decode.Tiny(size)
}

// stagePreprocess is the preprocessing of the images a stage trains on:
// its visual tokenizer's (stage 1 trains it; stage 2's is frozen).
func stagePreprocess(s stage) decode.Preprocess {
	switch st := s.(type) {
	case *stage1:
		return preprocessFor(st.model.Config(), st.imageSize())
	case *stage2:
		return preprocessFor(st.tok.Config(), st.imageSize())
	}
	return decode.Tiny(s.imageSize())
}
