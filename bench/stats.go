package bench

import "slices"

// Median returns the median of xs (the mean of the two middle values when
// len(xs) is even), or 0 for no values. xs is not modified.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

// Rotation returns the order in which n targets run in round (0-based):
// the list rotated left by round, so over n consecutive rounds every target
// runs first exactly once and keeps the same neighbours.
func Rotation(n, round int) []int {
	order := make([]int, n)
	for i := range order {
		order[i] = (round + i) % n
	}
	return order
}
