// Package docs holds no code: its tests keep the pages under docs/ true to the code. docs_test.go fails when
// a file path or a Go identifier ARCHITECTURE.md cites in backticks no longer exists.
package docs
