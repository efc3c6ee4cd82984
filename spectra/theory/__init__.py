"""Theory: closed forms and random-matrix predictions (numpy/scipy only, no torch)."""
