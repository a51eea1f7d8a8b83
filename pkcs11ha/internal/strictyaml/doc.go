// Package strictyaml decodes the configuration file strictly (unknown keys are errors) and names the key
// an error is about, for the library's config and the sidecar's, which embeds it.
package strictyaml
