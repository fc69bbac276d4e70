// Encodes captions with @lenml/tokenizers (a JavaScript port of Hugging
// Face's tokenizers), the independent reference for hf.go.
//
//   node encode.js NODE_MODULES TOKENIZER_JSON TOKENIZER_CONFIG_JSON CAPTIONS
//
// CAPTIONS holds one JSON string per line; stdout gets one JSON array of
// ids per caption, without BOS/EOS.
const fs = require("fs");
const path = require("path");
const [modules, tokJSON, tokConfig, captions] = process.argv.slice(2);
const { TokenizerLoader } = require(path.join(modules, "@lenml", "tokenizers"));
const tok = TokenizerLoader.fromPreTrained({
  tokenizerJSON: JSON.parse(fs.readFileSync(tokJSON, "utf8")),
  tokenizerConfig: JSON.parse(fs.readFileSync(tokConfig, "utf8")),
});
const out = [];
for (const line of fs.readFileSync(captions, "utf8").split("\n")) {
  if (line === "") continue;
  const ids = tok.encode(JSON.parse(line), { add_special_tokens: false });
  out.push(JSON.stringify(ids));
}
process.stdout.write(out.join("\n") + "\n");
