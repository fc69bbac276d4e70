// Package e2e holds process-level tests: they build the real binaries and
// run coordinators and workers as separate processes on loopback, the way
// a user would.
package e2e
