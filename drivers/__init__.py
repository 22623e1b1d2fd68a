"""Instrument adapters (Nanonis TCP, SR830/SR860 lock-in, LakeShore thermometer) and their Protocols."""
