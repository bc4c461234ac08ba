package bench

import (
	"slices"
	"testing"
)

func TestMedian(t *testing.T) {
	cases := []struct {
		name string
		in   []float64
		want float64
	}{
		{"empty", nil, 0},
		{"one", []float64{7}, 7},
		{"odd count, unsorted", []float64{9, 1, 5}, 5},
		{"even count takes the mean of the middle two", []float64{4, 1, 3, 2}, 2.5},
		{"one outlier does not move it", []float64{100, 101, 99, 5000}, 100.5},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := slices.Clone(c.in)
			if got := Median(in); got != c.want {
				t.Errorf("Median(%v) = %v, want %v", c.in, got, c.want)
			}
			if !slices.Equal(in, c.in) {
				t.Errorf("Median reordered its input: %v", in)
			}
		})
	}
}

func TestRotation(t *testing.T) {
	t.Run("three targets", func(t *testing.T) {
		want := [][]int{{0, 1, 2}, {1, 2, 0}, {2, 0, 1}, {0, 1, 2}}
		for round, w := range want {
			if got := Rotation(3, round); !slices.Equal(got, w) {
				t.Errorf("Rotation(3, %d) = %v, want %v", round, got, w)
			}
		}
	})
	t.Run("every target leads once per n rounds", func(t *testing.T) {
		for n := 1; n <= 5; n++ {
			firsts := make(map[int]int)
			for round := range n {
				order := Rotation(n, round)
				sorted := slices.Sorted(slices.Values(order))
				for i, v := range sorted {
					if v != i {
						t.Fatalf("Rotation(%d, %d) = %v is not a permutation", n, round, order)
					}
				}
				firsts[order[0]]++
			}
			for i := range n {
				if firsts[i] != 1 {
					t.Errorf("n=%d: target %d ran first %d times in %d rounds, want once", n, i, firsts[i], n)
				}
			}
		}
	})
}
