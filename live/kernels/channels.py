"""The channel-choice rule of the analysis, defined in :mod:`stslive.acquisition.formats.channels`.

Re-exported here so the kernels' public names stay where callers import them from.
"""

from __future__ import annotations

from stslive.acquisition.formats.channels import ChannelPick, check_sweep_is_bias, pick_channels

__all__ = ["ChannelPick", "check_sweep_is_bias", "pick_channels"]
