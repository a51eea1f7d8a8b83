package main

import (
	"fmt"
	"os"
)

// runDemo runs the demo subcommand.
func runDemo(args []string) int {
	_ = args
	fmt.Fprintln(os.Stderr, "demo: not yet implemented")
	return 2
}
