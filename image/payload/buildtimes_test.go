package payload

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestRecordBuildTimeConcurrent: Builders sharing a cache (as two
// buildpayload processes do) record their components' times without
// losing one another's.
func TestRecordBuildTimeConcurrent(t *testing.T) {
	cache := t.TempDir()
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			(&Builder{CacheDir: cache}).recordBuildTime(fmt.Sprintf("c%d", i), time.Duration(i+1)*time.Second)
		})
	}
	wg.Wait()
	times := (&Builder{CacheDir: cache}).lastBuildTimes()
	for i := range 16 {
		if got := times[fmt.Sprintf("c%d", i)]; got != float64(i+1) {
			t.Errorf("c%d: recorded %v s, want %d s (all: %v)", i, got, i+1, times)
		}
	}
}
