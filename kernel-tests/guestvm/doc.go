// Package guestvm is the kernel tests' view of the product guest image
// (loader/image): the names the tests were written against (Prepare, Image,
// RunOptions, Result, BuildTestBinary, the test policy's contexts), so a test
// reads `guestvm.Prepare` / `img.Run` for "boot Debian's kernel and run my
// test binary in it". It builds nothing itself: image building, caching and
// pruning live in loader/image, which the shipped binary uses too. Only tests
// import this package; nothing shipped may (a layering test in cmd/mlsgate
// checks).
package guestvm
