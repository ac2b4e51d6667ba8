package coldplug

// Alias maps a modalias pattern (modules.alias syntax, an fnmatch glob) to
// the module that drives devices matching it.
type Alias struct {
	Pattern string
	Module  string
}

// Match returns the modules whose aliases match modalias, each once, in
// alias order, as modprobe resolves a modalias.
func Match(aliases []Alias, modalias string) []string {
	var mods []string
	seen := map[string]bool{}
	for _, a := range aliases {
		if !seen[a.Module] && fnmatch(a.Pattern, modalias) {
			seen[a.Module] = true
			mods = append(mods, a.Module)
		}
	}
	return mods
}

// fnmatch is fnmatch(3) with no flags: '*' matches any run of characters
// ('/' included), '?' one character, '[…]' a set with ranges and '!' or '^'
// negation, '\' quotes the next character.
func fnmatch(pattern, s string) bool {
	px, sx := 0, 0
	// On a mismatch after a '*', retry with the star eating one more byte.
	starPx, starSx := -1, 0
	for sx < len(s) {
		if px < len(pattern) {
			switch c := pattern[px]; c {
			case '*':
				starPx, starSx = px, sx
				px++
				continue
			case '?':
				px++
				sx++
				continue
			case '[':
				if ok, next, valid := matchClass(pattern, px, s[sx]); valid {
					if ok {
						px, sx = next, sx+1
						continue
					}
				} else if s[sx] == '[' { // an unterminated '[' is literal
					px, sx = px+1, sx+1
					continue
				}
			case '\\':
				if px+1 < len(pattern) && pattern[px+1] == s[sx] {
					px, sx = px+2, sx+1
					continue
				}
			default:
				if c == s[sx] {
					px, sx = px+1, sx+1
					continue
				}
			}
		}
		if starPx < 0 {
			return false
		}
		starSx++
		px, sx = starPx+1, starSx
	}
	for px < len(pattern) && pattern[px] == '*' {
		px++
	}
	return px == len(pattern)
}

// matchClass matches c against the bracket expression starting at
// pattern[open] == '['. It returns whether c is in the set, the index after
// the closing ']', and whether the expression is terminated at all.
func matchClass(pattern string, open int, c byte) (ok bool, next int, valid bool) {
	i := open + 1
	negate := i < len(pattern) && (pattern[i] == '!' || pattern[i] == '^')
	if negate {
		i++
	}
	first := true
	for i < len(pattern) {
		if pattern[i] == ']' && !first {
			return ok != negate, i + 1, true
		}
		first = false
		lo := pattern[i]
		if lo == '\\' && i+1 < len(pattern) {
			i++
			lo = pattern[i]
		}
		hi := lo
		if i+2 < len(pattern) && pattern[i+1] == '-' && pattern[i+2] != ']' {
			hi = pattern[i+2]
			i += 2
		}
		if lo <= c && c <= hi {
			ok = true
		}
		i++
	}
	return false, 0, false
}
