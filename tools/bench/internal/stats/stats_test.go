package stats

import (
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	in := []time.Duration{3, 1, 2}
	if got := Median(in); got != 2 {
		t.Errorf("Median(3,1,2) = %v, want 2", got)
	}
	if in[0] != 3 {
		t.Error("Median sorted its argument")
	}
	if got := Median([]float64{4, 1, 3, 2}); got != 3 {
		t.Errorf("Median(4,1,3,2) = %v, want 3 (the upper middle)", got)
	}
	if got := Median[float64](nil); got != 0 {
		t.Errorf("Median(nil) = %v, want 0", got)
	}
}
