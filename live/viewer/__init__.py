"""The control-room screen (pyqtgraph): window, panels and the data sources that feed it."""
