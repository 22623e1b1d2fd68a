"""Simulated NbN film (forward model) and simulated instruments behind real TCP servers."""
