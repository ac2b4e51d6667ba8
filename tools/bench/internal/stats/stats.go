// Package stats holds the summary figures the benches print.
package stats

import (
	"cmp"
	"slices"
)

// Median is the middle value of v (the upper one of an even count), or the
// zero value for none.
func Median[T cmp.Ordered](v []T) T {
	var zero T
	if len(v) == 0 {
		return zero
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
