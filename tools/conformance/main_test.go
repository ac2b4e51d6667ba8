package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A report shaped like e2e.test's (Ginkgo's JUnit reporter): the failed
// case's reason must reach the printed summary.
const sampleJUnit = `<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="2" failures="1">
  <testsuite name="Kubernetes e2e suite" tests="2" failures="1">
    <testcase name="[It] [sig-network] Services should serve a basic endpoint from pods [Conformance]" time="14.5"></testcase>
    <testcase name="[It] [sig-network] Services should be able to switch session affinity for service with type clusterIP [LinuxOnly] [Conformance]" time="15.9">
      <failure message="Affinity shouldn't hold but did." type="failed">[FAILED] Affinity shouldn't hold but did.
In [It] at: k8s.io/kubernetes/test/e2e/network/service.go:4202
line 3
line 4</failure>
    </testcase>
  </testsuite>
</testsuites>`

func TestJUnitFailureReport(t *testing.T) {
	path := filepath.Join(t.TempDir(), "junit_01.xml")
	if err := os.WriteFile(path, []byte(sampleJUnit), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := readJUnit(path)
	if err != nil {
		t.Fatal(err)
	}
	passed, ok := r.find("[sig-network] Services should serve a basic endpoint from pods")
	if !ok || passed.Failure != nil || passed.Time != 14.5 {
		t.Fatalf("passed case = %+v, found %v", passed, ok)
	}
	failed, ok := r.find("[sig-network] Services should be able to switch session affinity for service with type clusterIP")
	if !ok || failed.Failure == nil {
		t.Fatalf("failed case = %+v, found %v", failed, ok)
	}
	got := failed.Failure.report(2)
	for _, want := range []string{"    [FAILED] Affinity shouldn't hold but did.", "service.go:4202", "2 more lines in the JUnit report"} {
		if !strings.Contains(got, want) {
			t.Errorf("report lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "line 3") {
		t.Errorf("report not cut to 2 lines:\n%s", got)
	}
}
