"""The control-room screen (pyqtgraph): the window, its panels and the data sources that feed it.

``window`` draws, ``panels`` are its parts, ``sources`` is the protocol the window reads through;
``archive_source`` and ``stream_source`` implement it for files and for the analyser's stream.
"""
