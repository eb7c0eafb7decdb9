package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// copiedBinaryName is the file --copy-binary-to writes in its directory;
// tokenFileName holds the drain token beside it, for `tidegate prestop
// --token-file` (the chained preStop hook of an injected pod, whose command
// line the kubelet prints in events and logs when the hook fails).
const (
	copiedBinaryName = "tidegate"
	tokenFileName    = "drain-token"
)

// writeTokenFile writes token to dir/drain-token with mode 0444 (the app
// container may run as any user), through replaceFile. An empty token
// removes the file, so that no stale token stays behind.
func writeTokenFile(dir, token string) error {
	dst := filepath.Join(dir, tokenFileName)
	if token == "" {
		if err := os.Remove(dst); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("--copy-binary-to %s: remove the stale %s: %w", dir, tokenFileName, err)
		}
		return nil
	}
	err := replaceFile(dir, tokenFileName, 0o444, func(w io.Writer) error {
		_, err := io.WriteString(w, token)
		return err
	})
	if err != nil {
		return fmt.Errorf("--copy-binary-to %s: write %s: %w", dir, tokenFileName, err)
	}
	return nil
}

// replaceFile writes dir/name whole or not at all: fill writes a temporary
// file in dir, which gets mode, is synced and renamed over dir/name (a
// symbolic link there is replaced, never followed); then dir is synced, on
// a best-effort basis, to make the rename durable.
func replaceFile(dir, name string, mode os.FileMode, fill func(io.Writer) error) (err error) {
	tmp, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = os.Remove(tmp.Name())
		}
	}()
	err = fill(tmp)
	if err == nil {
		err = tmp.Chmod(mode)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(dir, name))
	}
	if err != nil {
		return err
	}
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// copyBinary copies the file src (the running binary) to dir/tidegate with
// mode 0555, through a temporary file in dir that is synced and renamed,
// so that a container running dir/tidegate never sees half a binary. It
// does nothing (copied false) when dir/tidegate already has src's size and
// SHA-256. Errors name dir and say what to do.
func copyBinary(src, dir string) (copied bool, err error) {
	dst := filepath.Join(dir, copiedBinaryName)
	hint := func(err error) error {
		return fmt.Errorf("--copy-binary-to %s: %w: mount a writable volume there (an emptyDir shared with the app container), or unset --copy-binary-to", dir, err)
	}
	in, err := os.Open(src)
	if err != nil {
		return false, fmt.Errorf("--copy-binary-to %s: cannot read the running binary %s: %w", dir, src, err)
	}
	defer in.Close()
	srcInfo, err := in.Stat()
	if err != nil {
		return false, fmt.Errorf("--copy-binary-to %s: %w", dir, err)
	}
	if fi, err := os.Stat(dir); err != nil {
		return false, hint(err)
	} else if !fi.IsDir() {
		return false, hint(fmt.Errorf("not a directory"))
	}
	if same, err := sameContent(in, srcInfo.Size(), dst); err != nil {
		return false, fmt.Errorf("--copy-binary-to %s: %w", dir, err)
	} else if same {
		return false, nil
	}
	err = replaceFile(dir, copiedBinaryName, 0o555, func(w io.Writer) error {
		if _, err := in.Seek(0, io.SeekStart); err != nil {
			return err
		}
		_, err := io.Copy(w, in)
		return err
	})
	if err != nil {
		return false, hint(err)
	}
	return true, nil
}

// sameContent reports whether the file dst itself (never what a symbolic
// link there points to: the copy replaces the link) is a regular file with
// size n and the same SHA-256 as src (read from its start).
func sameContent(src io.ReadSeeker, n int64, dst string) (bool, error) {
	fi, err := os.Lstat(dst)
	if err != nil || !fi.Mode().IsRegular() || fi.Size() != n {
		return false, nil // absent, a link, or different: copy
	}
	sum := func(r io.Reader) ([]byte, error) {
		h := sha256.New()
		_, err := io.Copy(h, r)
		return h.Sum(nil), err
	}
	if _, err := src.Seek(0, io.SeekStart); err != nil {
		return false, err
	}
	want, err := sum(src)
	if err != nil {
		return false, err
	}
	f, err := os.OpenFile(dst, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return false, nil // unreadable, or swapped for a link since: replace it
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return false, nil
	}
	got, err := sum(f)
	return err == nil && bytes.Equal(got, want), nil
}
