package text

import (
	"context"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/lavit-org/lavit/internal/objstore"
)

// Names of the synthetic data set's word vocabulary as a text.tokenizer
// value: "words" (the model configs' name) and "tiny".
const (
	WordsName = "words"
	TinyName  = "tiny"
)

// Open returns the tokenizer a model config's text.tokenizer value names:
//
//	words, tiny                             TinyWords
//	PATH/tokenizer.json, file://…, s3://…   a Hugging Face tokenizer.json (LoadHF)
//	PATH/….model, file://…, s3://…          a SentencePiece model (LoadSentencePiece)
//
// A path is local; file:// URLs must be absolute; s3:// URLs are configured
// by the environment, as everywhere in lavit (objstore.S3ConfigFromEnv). The file's name picks
// the format: tokenizer.json (any name ending in .json) or .model.
func Open(ctx context.Context, ref string) (Tokenizer, error) {
	switch ref {
	case WordsName, TinyName:
		return TinyWords(), nil
	case "":
		return nil, fmt.Errorf("no tokenizer named (want %q, a tokenizer.json or a .model file, as a path, file:// or s3:// URL)", WordsName)
	}
	kind := ""
	switch {
	case strings.HasSuffix(ref, ".json"):
		kind = "tokenizer.json"
	case strings.HasSuffix(ref, ".model"):
		kind = "sentencepiece model"
	default:
		return nil, fmt.Errorf("tokenizer %q: not %q, and not a file ending in tokenizer.json or .model", ref, WordsName)
	}
	var data []byte
	if strings.Contains(ref, "://") {
		var err error
		if data, err = readURL(ctx, ref, kind); err != nil {
			return nil, err
		}
	} else {
		var err error
		if data, err = readBounded(ref, MaxTokenizerJSONBytes, kind); err != nil {
			return nil, err
		}
	}
	var tok Tokenizer
	var err error
	if kind == "tokenizer.json" {
		tok, err = ParseHF(data)
	} else {
		tok, err = ParseSentencePiece(data)
	}
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", kind, ref, err)
	}
	return tok, nil
}

// readURL reads a file:// or s3:// object of at most MaxTokenizerJSONBytes
// (which is also MaxModelBytes).
func readURL(ctx context.Context, ref, kind string) ([]byte, error) {
	dir, name := path.Split(ref)
	if name == "" || strings.HasSuffix(dir, "://") {
		return nil, fmt.Errorf("%s %s: want a URL of a file in a directory or bucket (file:///dir/tokenizer.json, s3://bucket/dir/tokenizer.json)", kind, ref)
	}
	src, err := objstore.Open(ctx, strings.TrimSuffix(dir, "/"))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", kind, ref, err)
	}
	info, err := src.Stat(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", kind, ref, err)
	}
	if info.Size > MaxTokenizerJSONBytes {
		return nil, fmt.Errorf("%s %s: %d bytes, over the %d-byte limit", kind, ref, info.Size, MaxTokenizerJSONBytes)
	}
	rc, err := src.Open(ctx, name, 0, MaxTokenizerJSONBytes+1)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", kind, ref, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", kind, ref, err)
	}
	if int64(len(data)) > MaxTokenizerJSONBytes {
		return nil, fmt.Errorf("%s %s: over the %d-byte limit", kind, ref, MaxTokenizerJSONBytes)
	}
	return data, nil
}
