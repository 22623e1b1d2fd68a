"""Run model, grid plans, scan engine, run archive (HDF5) and run stream (ZeroMQ)."""
