package txn

import "testing"

func TestLineDiff(t *testing.T) {
	for _, tc := range []struct{ a, b, want string }{
		{"", "x\n", "+ x\n"},
		{"a\nb\nc\n", "a\nB\nc\n", "  a\n- b\n+ B\n  c\n"},
		{"a\nb\n", "a\nb\n", "  a\n  b\n"},
		{"a\nb\n", "b\n", "- a\n  b\n"},
	} {
		if got := LineDiff(tc.a, tc.b); got != tc.want {
			t.Errorf("LineDiff(%q, %q) =\n%s\nwant\n%s", tc.a, tc.b, got, tc.want)
		}
	}
}
