"""One policy per file; `sched.factory` maps names to them."""
