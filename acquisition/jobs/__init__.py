"""Tools built on the library (demo supervisor, soak, simulate, benchmarks); library code never imports them."""
