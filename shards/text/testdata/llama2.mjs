// The second reference for hf.go, on Llama-2's own vocabulary:
// llama-tokenizer-js (an independent JavaScript Llama 1/2 tokenizer that
// carries Llama's vocabulary and merges). It writes them out as a
// Hugging Face tokenizer.json of Llama-2's shape, then encodes captions.
//
//   node llama2.mjs NODE_MODULES OUT_TOKENIZER_JSON CAPTIONS
//
// CAPTIONS holds one JSON string per line; stdout gets one JSON array of
// ids per caption, without BOS (a preceding space added, as Llama's
// tokenizer does).
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [modules, outJSON, captions] = process.argv.slice(2);
const lib = await import(pathToFileURL(path.join(modules, "llama-tokenizer-js", "llama-tokenizer.js")).href);
const tok = lib.default;

const vocab = {};
tok.vocabById.forEach((piece, id) => { vocab[piece] = id; });
const merges = [...tok.merges.entries()].sort((a, b) => a[1] - b[1]).map(([key]) => key);
const special = (id, content) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
fs.writeFileSync(outJSON, JSON.stringify({
  version: "1.0",
  added_tokens: [special(0, tok.vocabById[0]), special(1, tok.vocabById[1]), special(2, tok.vocabById[2])],
  normalizer: { type: "Sequence", normalizers: [
    { type: "Prepend", prepend: "\u2581" },
    { type: "Replace", pattern: { String: " " }, content: "\u2581" },
  ] },
  pre_tokenizer: null,
  model: { type: "BPE", dropout: null, unk_token: tok.vocabById[0], fuse_unk: true, byte_fallback: true, vocab, merges },
}));

const out = [];
for (const line of fs.readFileSync(captions, "utf8").split("\n")) {
  if (line === "") continue;
  out.push(JSON.stringify(tok.encode(JSON.parse(line), false, true)));
}
process.stdout.write(out.join("\n") + "\n");
