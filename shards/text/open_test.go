package text

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/lavit-org/lavit/internal/objstore"
	"github.com/lavit-org/lavit/internal/testutil"
)

// TestOpenS3: Open reads a tokenizer.json and a SentencePiece model from a
// real S3 server (versitygw), and names a missing object.
func TestOpenS3(t *testing.T) {
	srv := testutil.StartS3(t)
	srv.MakeBucket(t, "tok")
	t.Setenv("AWS_ENDPOINT_URL", srv.Endpoint)
	t.Setenv("AWS_ENDPOINT_URL_S3", "")
	t.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_REGION", srv.Region)
	ctx := context.Background()
	src, err := objstore.Open(ctx, "s3://tok/llama")
	if err != nil {
		t.Fatal(err)
	}
	hf, sp := marshal(t, tinyHF()), bpeModel(testPieces, 2)
	for name, data := range map[string][]byte{"tokenizer.json": hf, "tokenizer.model": sp} {
		if err := src.Put(ctx, name, bytes.NewReader(data), int64(len(data))); err != nil {
			t.Fatal(err)
		}
	}
	local, err := ParseHF(hf)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := Open(ctx, "s3://tok/llama/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	got, err1 := tok.Encode("abc ab é")
	want, err2 := local.Encode("abc ab é")
	if err1 != nil || err2 != nil || !slices.Equal(got, want) {
		t.Fatalf("S3 tokenizer.json: %v, %v; local %v, %v", got, err1, want, err2)
	}
	if tok, err := Open(ctx, "s3://tok/llama/tokenizer.model"); err != nil || tok.VocabSize() != len(testPieces) {
		t.Fatalf("S3 tokenizer.model: %v", err)
	}
	if _, err := Open(ctx, "s3://tok/llama/missing/tokenizer.json"); !errors.Is(err, objstore.ErrNotFound) || !strings.Contains(err.Error(), "missing/tokenizer.json") {
		t.Errorf("missing object: %v", err)
	}
	if _, err := Open(ctx, "s3://tokenizer.json"); err == nil || !strings.Contains(err.Error(), "want a URL of a file in a directory or bucket") {
		t.Errorf("bucket-less URL: %v", err)
	}
}
