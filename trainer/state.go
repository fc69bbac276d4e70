package trainer

import "github.com/lavit-org/lavit/checkpoint"

// State layout (written by the shim, little-endian):
//
//	"LAVITST1" | u32 format | u32 stage | u64 adam_t | u64 step | u8 vq_on | u8 selector_frozen
//	| u32 tensor count | per tensor: u32 name length, name, u64 numel, float32 × numel
//	| u32 FNV-1a checksum of everything before it
//
// Every tensor is flat, in the same order as the parameter buffer, so a
// checkpoint can store and restore any slice of it at any world size.

// StateInfo is a parsed state.
type StateInfo = checkpoint.StateInfo

// ParseState decodes and verifies a state blob in the shim's state format
// (or a blocked state). The blob is untrusted: checkpoint.ParseState checks
// every count and size in it against its bytes before allocating, so a bad
// one is an error naming the field, never a panic.
func ParseState(b []byte) (*StateInfo, error) { return checkpoint.ParseState(b, StateFormat) }
