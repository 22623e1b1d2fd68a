"""The fixed sample counts of the kernels, named, with what they stand for physically.

They were chosen on the reference sampling (1601 points over +-40 mV: a 50 uV bias step, 0.3 K,
50 uV rms modulation, Delta ~ 1.2 meV); each docstring gives the count's width at that step.
They are counts of samples, not widths in volts: on another bias step they stand for another
width. Changing one changes the numbers of every analysis.
"""

from __future__ import annotations

#: Reference bias step the sample counts below were chosen for, V (1601 points over +-40 mV).
REFERENCE_STEP_V = 50e-6

#: Fewest points of a bias sweep the kernels accept (a uniform grid needs a step; the smallest
#: window below needs more).
MIN_SWEEP_POINTS = 8

#: Default width of the box derivative's running mean, samples (0.55 mV at the reference step):
#: wide enough to average the current noise, narrow against the coherence peak's ~0.5 mV rise.
DEFAULT_SMOOTHING_POINTS = 11

#: The conductance sign of a current compares the means of the outer 1/SIGN_END_DIVISOR of the
#: sweep at each end (5 %: 4 mV at each end of +-40 mV), so noise cannot flip it.
SIGN_END_DIVISOR = 20

#: Running-mean width of a lock-in channel before the coarse argmax, samples (0.25 mV at the
#: reference step): keeps single-sample noise spikes from the argmax, narrower than a peak.
LOCKIN_SMOOTHING_POINTS = 5

#: Running-mean width of the background removed before the coarse argmax, samples (2.05 mV at
#: the reference step): wider than a coherence peak (~0.2 mV), narrower than the curvature of
#: the Altshuler-Aronov background.
CONTRAST_POINTS = 41

#: Fewest search samples per polarity for the gap search to cover that polarity (0.4 mV at the
#: reference step); the search range holds 75 there.
MIN_SEARCH_SAMPLES = 8

#: Columns the gap search reads reach this many samples beyond the end of the search range
#: (2.4 mV at the reference step): the contrast's half width (20) plus the template window's
#: reach past the coarse peak (1.6 mV = 32 samples, less the inward offset), with margin.
GAP_REACH_SAMPLES = 48

#: The coarse peak (argmax of the 11-point derivative minus its CONTRAST_POINTS background) lies
#: -0.1..6 samples outside the true maximum, median 2.8, on the simulated 0.3 K film (measured,
#: seeds 3 and 2024): the template window is centred this far inside (0.15 mV at the reference
#: step) and its shifts reach +-TEMPLATE_MAX_SHIFT samples.
COARSE_OUTWARD_SAMPLES = 3

#: The same for a lock-in channel (LOCKIN_SMOOTHING_POINTS mean, same contrast): -1.2..4
#: samples, median 0.7 (0.05 mV at the reference step).
LOCKIN_COARSE_OUTWARD_SAMPLES = 1

#: Template shifts around the centred window reach +- this many samples (0.3 mV at the
#: reference step): the spread of the coarse peak's offset above.
TEMPLATE_MAX_SHIFT = 6.0

#: Step of the template shifts, samples (12.5 uV at the reference step): the fit's sub-sample grid,
#: refined further by a parabola through the scores.
TEMPLATE_SHIFT_STEP = 0.25

#: Templates are drawn on a grid this many times finer than the bias step (2.5 uV at the
#: reference step), so every sub-sample shift falls on a drawn point.
TEMPLATE_OVERSAMPLE = 20

#: Extra samples of the drawn template beyond the window and the shifts, before the thermal and
#: modulation reach is added (room for the parabola's neighbours).
TEMPLATE_MARGIN_SAMPLES = 4

#: Fewest samples of a power-law fit window per polarity (a line through ln|V| needs more than two).
MIN_WINDOW_SAMPLES = 3

#: Spectra used to estimate a batch's Dynes width (more adds time, not accuracy).
WIDTH_SAMPLE = 1024
