"""Analysis kernels, correlations and theory, the live analyser, flags and the control-room screen."""
