package main

import "testing"

func TestSummarize(t *testing.T) {
	s := make([]float64, 0, 1000)
	for i := 1000; i >= 1; i-- {
		s = append(s, float64(i))
	}
	l := summarize(s)
	if l.P50 != 500 || l.P90 != 900 || l.P99 != 990 || l.P999 != 999 || l.Max != 1000 || l.Count != 1000 {
		t.Fatalf("got %+v", l)
	}
	ten := []float64{10, 9, 8, 7, 6, 5, 4, 3, 2, 1}
	if l := summarize(ten); l.P90 != 9 || l.P50 != 5 || l.P99 != 10 {
		t.Fatalf("got %+v", l)
	}
	if l := summarize(nil); l.Count != 0 {
		t.Fatalf("got %+v", l)
	}
}
