// Command txn measures network transactions in a network namespace with
// default settings: time from apply of a good change to committed, and from
// apply of a bad change (a gateway nobody answers for) to the previous
// config restored; medians over -count iterations (at least 10).
//
//	go run ./tools/bench/txn [-count 10]
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"regexp"

	"github.com/ballast-os/ballast/image"
)

func main() {
	count := flag.Int("count", 10, "iterations (each one good and one bad change)")
	flag.Parse()
	src, err := image.FindSourceDir(".")
	if err != nil {
		fail(err)
	}
	cmd := exec.Command("go", "test", "-run", "^$", "-bench", "^BenchmarkTransactions$", fmt.Sprintf("-benchtime=%dx", *count), "./initagent/txn/")
	cmd.Dir = src
	out, err := cmd.CombinedOutput()
	if err != nil {
		fail(fmt.Errorf("%v\n%s", err, out))
	}
	m := regexp.MustCompile(`([\d.]+) bad-revert-ms\s+([\d.]+) good-commit-ms`).FindStringSubmatch(string(out))
	if m == nil {
		fail(fmt.Errorf("benchmark output not understood (run as root):\n%s", out))
	}
	fmt.Printf("network transactions in a netns, default settings (10s deadline, 3s per probe), %d iterations\n", *count)
	fmt.Printf("  good change -> committed:             median %5s ms (target <= 2000)\n", m[2])
	fmt.Printf("  bad gateway -> previous config back:  median %5s ms (target <= 5000; kubernetes-nmstate waits up to 120 s)\n", m[1])
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench/txn:", err)
	os.Exit(1)
}
