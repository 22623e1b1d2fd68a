"""Tools built on the library: demo, soak, simulate, the benchmarks, the process supervisor and the
mock lab as they start it. Library code never imports them; they never import a command line."""
