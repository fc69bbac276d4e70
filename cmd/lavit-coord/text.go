package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/lavit-org/lavit/internal/cliutil"
	"github.com/lavit-org/lavit/shards/text"
)

// maxCaptionLine bounds one line of `text encode`'s input.
const maxCaptionLine = 16 << 20

// textCommand lets users check what the LM will see: captions in, text
// ids out, with the tokenizer a model config's text.tokenizer names.
func textCommand() *cli.Command {
	return &cli.Command{
		Name:  "text",
		Usage: "caption tokenizers: see the text ids a model config's text.tokenizer gives captions",
		Subcommands: []*cli.Command{
			{
				Name: "encode",
				Usage: "read captions on stdin, one a line, and print one JSON array of text ids a line " +
					"(no BOS/EOS unless asked; a trailing \\r is part of the line ending)",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "tokenizer", Usage: "words (the synthetic data set's), or a tokenizer.json or SentencePiece .model file: a path, file:///abs/path or s3://bucket/key (as text.tokenizer in a model config)"},
					&cli.BoolFlag{Name: "bos", Usage: "start each line's ids with the tokenizer's BOS id"},
					&cli.BoolFlag{Name: "eos", Usage: "end each line's ids with the tokenizer's EOS id"},
				},
				Action: func(c *cli.Context) error {
					if err := noArgs(c); err != nil {
						return err
					}
					ref := c.String("tokenizer")
					if ref == "" {
						return cliutil.Usagef("text encode: --tokenizer is required (words, a tokenizer.json or a .model file: path, file:// or s3:// URL)")
					}
					tok, err := text.Open(c.Context, ref)
					if err != nil {
						return cliutil.Usagef("text encode: --tokenizer: %w", err)
					}
					return encodeLines(tok, os.Stdin, os.Stdout, c.Bool("bos"), c.Bool("eos"))
				},
			},
		},
	}
}

// encodeLines writes one JSON array of ids for each line of in. A line the
// tokenizer refuses stops it with an error naming the line.
func encodeLines(tok text.Tokenizer, in io.Reader, out io.Writer, bos, eos bool) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), maxCaptionLine)
	w := bufio.NewWriter(out)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSuffix(sc.Text(), "\r")
		ids, err := tok.Encode(line)
		if err != nil {
			return fmt.Errorf("text encode: line %d: %w", n, err)
		}
		if bos {
			ids = append([]int{tok.BOS()}, ids...)
		}
		if eos {
			ids = append(ids, tok.EOS())
		}
		b := append(make([]byte, 0, 8*len(ids)+3), '[')
		for i, id := range ids {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendInt(b, int64(id), 10)
		}
		b = append(b, ']', '\n')
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("text encode: line %d: longer than %d bytes", n+1, maxCaptionLine)
		}
		return fmt.Errorf("text encode: reading stdin: %w", err)
	}
	return w.Flush()
}
