"""Data: the sample type and readers of local benchmark files."""

from vh_lens.data.sample import Box, Sample, load_rgb

__all__ = ["Box", "Sample", "load_rgb"]
