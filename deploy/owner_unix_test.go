//go:build unix

package deploy

import (
	"fmt"
	"os"
	"syscall"
)

// ownerOf returns "UID GID" of a file.
func ownerOf(fi os.FileInfo) string {
	st := fi.Sys().(*syscall.Stat_t)
	return fmt.Sprintf("%d %d", st.Uid, st.Gid)
}
